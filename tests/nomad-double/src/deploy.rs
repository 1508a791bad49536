//! Deployments, as Nomad keeps them for service jobs with an update strategy
//! (`nomad/structs/deployment.go`, the scheduler's reconciler creating one per new job
//! version that places or replaces allocations, `nomad/deploymentwatcher` moving it on as
//! allocations report health; hashicorp/nomad at aa026cc9):
//!
//! - a deployment is created when an evaluation of a service job places or destructively
//!   updates allocations of a group whose `Update.MaxParallel` is above 0 and the job version
//!   has none yet; the evaluation's `DeploymentID` names it; an older running deployment of the
//!   job is `cancelled` ("Cancelled due to newer version of job");
//! - its `TaskGroups[group]` count `DesiredTotal` (the group's count), `PlacedAllocs`,
//!   `HealthyAllocs`, `UnhealthyAllocs`; `Status` `running` ("Deployment is running") until every
//!   placed allocation is healthy (`successful`, "Deployment completed successfully", and the
//!   job version becomes `Stable`), one is unhealthy (`failed`, "Failed due to unhealthy
//!   allocations") or the group's `ProgressDeadline` passes without progress (`failed`,
//!   "Failed due to progress deadline");
//! - allocations carry `DeploymentStatus: {Healthy, Timestamp, Canary, ModifyIndex}`, `null`
//!   until they report.
//!
//! Health is what a test sets ([`crate::DeploymentHealth`]): nothing runs here. A failed
//! allocation (ClientStatus `failed`/`lost`, or a template that does not render) is unhealthy
//! whatever the setting. Time moves the deployment on lazily: each request first calls
//! [`Nomad::tick`].
//!
//! Endpoints: `GET /v1/job/:id/deployment` (the latest of the job's current incarnation, or
//! `null`), `GET /v1/job/:id/deployments` (newest first), `GET /v1/deployment/:id` (404
//! `deployment not found`), each needing `read-job`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::Nomad;
use crate::go::{now_ns, rfc3339, uuid};
use crate::{DeploymentHealth, key};

pub(crate) struct Deployment {
    pub(crate) json: Value,
    created: Instant,
    /// Allocations placed for it.
    allocs: Vec<String>,
    /// The smallest `ProgressDeadline` of its groups.
    deadline: Duration,
}

impl Deployment {
    pub(crate) fn id(&self) -> &str {
        self.json["ID"].as_str().unwrap_or_default()
    }

    fn is(&self, ns: &str, job: &str) -> bool {
        self.json["Namespace"] == ns && self.json["JobID"] == job
    }
}

impl Nomad {
    /// After an evaluation placed `placed` (group → allocation IDs) for `job`: the deployment
    /// of this version, made if the version has none and a group with an update strategy
    /// changed. Returns its ID for the evaluation.
    pub(crate) fn deploy(
        &mut self,
        job: &Value,
        placed: &[(String, String)],
        index: u64,
    ) -> Option<String> {
        if job["Type"] != "service" || job["Stop"].as_bool().unwrap_or(false) {
            return None;
        }
        let (ns, id) = (
            job["Namespace"].as_str().unwrap_or_default().to_owned(),
            job["ID"].as_str().unwrap_or_default().to_owned(),
        );
        let version = job["Version"].as_u64().unwrap_or(0);
        let create = job["CreateIndex"].as_u64().unwrap_or(0);
        if let Some(d) = self.deployments.iter().find(|d| {
            d.is(&ns, &id) && d.json["JobVersion"] == version && d.json["JobCreateIndex"] == create
        }) {
            return Some(d.id().to_owned());
        }
        let groups: Vec<&Value> = job["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|g| g["Update"]["MaxParallel"].as_i64().unwrap_or(0) > 0)
            .collect();
        let touched: Vec<&Value> = groups
            .into_iter()
            .filter(|g| placed.iter().any(|(name, _)| g["Name"] == name.as_str()))
            .collect();
        if touched.is_empty() {
            return None;
        }
        let now = now_ns();
        for d in self
            .deployments
            .iter_mut()
            .filter(|d| d.is(&ns, &id) && d.json["Status"] == "running")
        {
            d.json["Status"] = json!("cancelled");
            d.json["StatusDescription"] = json!("Cancelled due to newer version of job");
            d.json["ModifyIndex"] = json!(index);
            d.json["ModifyTime"] = json!(now);
        }
        let mut states = serde_json::Map::new();
        let mut deadline = Duration::MAX;
        for g in &touched {
            let name = g["Name"].as_str().unwrap_or_default();
            let progress = g["Update"]["ProgressDeadline"].as_i64().unwrap_or(0);
            let progress = Duration::from_nanos(u64::try_from(progress).unwrap_or(0));
            deadline = deadline.min(progress);
            states.insert(
                name.to_owned(),
                json!({
                    "AutoRevert": g["Update"]["AutoRevert"], "AutoPromote": g["Update"]["AutoPromote"],
                    "ProgressDeadline": g["Update"]["ProgressDeadline"],
                    "RequireProgressBy": rfc3339(now + i64::try_from(progress.as_nanos()).unwrap_or(i64::MAX)),
                    "Promoted": false, "PlacedCanaries": null, "DesiredCanaries": 0,
                    "DesiredTotal": g["Count"],
                    "PlacedAllocs": placed.iter().filter(|(n, _)| n == name).count(),
                    "HealthyAllocs": 0, "UnhealthyAllocs": 0,
                }),
            );
        }
        let did = uuid();
        self.deployments.push(Deployment {
            json: json!({
                "ID": did, "Namespace": ns, "JobID": id, "JobVersion": version,
                "JobModifyIndex": job["ModifyIndex"], "JobSpecModifyIndex": job["JobModifyIndex"],
                "JobCreateIndex": create, "IsMultiregion": false,
                "TaskGroups": states, "Status": "running",
                "StatusDescription": "Deployment is running", "EvalPriority": job["Priority"],
                "CreateIndex": index, "ModifyIndex": index, "CreateTime": now, "ModifyTime": now,
            }),
            created: Instant::now(),
            allocs: placed.iter().map(|(_, a)| a.clone()).collect(),
            deadline,
        });
        for a in self
            .allocs
            .iter_mut()
            .filter(|a| placed.iter().any(|(_, id)| *id == a.id))
        {
            a.deployment = Some(did.clone());
        }
        Some(did)
    }

    /// Moves running deployments on as time and the configured health say.
    pub(crate) fn tick(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .deployments
            .iter()
            .enumerate()
            .filter(|(_, d)| d.json["Status"] == "running")
            .map(|(i, _)| i)
            .collect();
        for i in due {
            let d = &self.deployments[i];
            let elapsed = now.duration_since(d.created);
            let mine: Vec<usize> = self
                .allocs
                .iter()
                .enumerate()
                .filter(|(_, a)| d.allocs.contains(&a.id))
                .map(|(j, _)| j)
                .collect();
            let broken = mine.iter().any(|&j| self.allocs[j].failed());
            let running = mine.iter().all(|&j| self.allocs[j].running());
            let verdict = match self.health {
                _ if broken => Some(false),
                DeploymentHealth::Healthy(after) if elapsed >= after && running => Some(true),
                DeploymentHealth::Unhealthy(after) if elapsed >= after => Some(false),
                _ if elapsed >= d.deadline => None,
                _ => continue,
            };
            let index = self.bump(&["deployment", "allocs"]);
            let ts = now_ns();
            for &j in &mine {
                let a = &mut self.allocs[j];
                a.healthy = verdict.or(Some(false));
                a.health_index = index;
                a.modify_index = index;
            }
            let d = &mut self.deployments[i];
            let (status, why) = match verdict {
                Some(true) => ("successful", "Deployment completed successfully"),
                Some(false) => ("failed", "Failed due to unhealthy allocations"),
                None => ("failed", "Failed due to progress deadline"),
            };
            d.json["Status"] = json!(status);
            d.json["StatusDescription"] = json!(why);
            d.json["ModifyIndex"] = json!(index);
            d.json["ModifyTime"] = json!(ts);
            if let Some(groups) = d.json["TaskGroups"].as_object_mut() {
                for g in groups.values_mut() {
                    let placed = g["PlacedAllocs"].clone();
                    if verdict == Some(true) {
                        g["HealthyAllocs"] = placed;
                    } else if verdict == Some(false) {
                        g["UnhealthyAllocs"] = placed;
                    }
                }
            }
            if verdict == Some(true) {
                let (ns, id) = (
                    d.json["Namespace"].as_str().unwrap_or_default().to_owned(),
                    d.json["JobID"].as_str().unwrap_or_default().to_owned(),
                );
                let version = d.json["JobVersion"].clone();
                if let Some(job) = self.jobs.get_mut(&key(&ns, &id))
                    && job["Version"] == version
                {
                    job["Stable"] = json!(true);
                    job["ModifyIndex"] = json!(index);
                }
            }
        }
    }

    /// `GET /v1/job/:id/deployment` (latest) or `/deployments` (all, newest first), of the
    /// job's current incarnation.
    pub(crate) fn job_deployments(&self, ns: &str, id: &str, latest: bool) -> Value {
        let create = self
            .jobs
            .get(&key(ns, id))
            .and_then(|j| j["CreateIndex"].as_u64());
        let mut mine: Vec<&Deployment> = self
            .deployments
            .iter()
            .filter(|d| d.is(ns, id) && create.is_some_and(|c| d.json["JobCreateIndex"] == c))
            .collect();
        mine.sort_by_key(|d| std::cmp::Reverse(d.json["CreateIndex"].as_u64().unwrap_or(0)));
        if latest {
            mine.first().map_or(Value::Null, |d| d.json.clone())
        } else {
            Value::Array(mine.into_iter().map(|d| d.json.clone()).collect())
        }
    }

    pub(crate) fn deployment(&self, id: &str) -> Option<(String, Value)> {
        self.deployments.iter().find(|d| d.id() == id).map(|d| {
            (
                d.json["Namespace"].as_str().unwrap_or_default().to_owned(),
                d.json.clone(),
            )
        })
    }
}
