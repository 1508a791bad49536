//! The cluster state ([`Nomad`]): namespaces, jobs, summaries, allocations, evaluations,
//! variables and the raft index, the endpoint handlers that read and write them (§2–§7, the
//! Variables section) and the small reconciler that stands in for the scheduler.
//! Must not touch the wire (sockets, TLS, headers): requests come in as [`Incoming`] and leave as
//! [`Reply`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::acl::{Acl, Need};
use crate::decode::{Dec, K, canonical_job, decode_body, get};
use crate::diff::{annotate, job_diff};
use crate::go::{now_ns, parse_go_bool, rfc3339, uuid};
use crate::http::{Incoming, Reply};
use crate::validate::{multierror, validate_job, validate_variable};
use crate::{AGENT_REGION, NODE_ID, NODE_NAME, Obj, Request, SERVER_FIELDS, ZERO_TIME, key};

pub(crate) struct Alloc {
    pub(crate) id: String,
    eval_id: String,
    name_index: u64,
    pub(crate) namespace: String,
    pub(crate) job_id: String,
    job_type: String,
    job_version: u64,
    job_create_index: u64,
    group: String,
    tasks: Vec<String>,
    /// The job spec (§3 fields removed) the allocation runs.
    job_spec: Value,
    desired: String,
    desired_desc: String,
    client: String,
    client_desc: String,
    create_index: u64,
    pub(crate) modify_index: u64,
    create_time: i64,
    modify_time: i64,
    /// The deployment that placed it.
    pub(crate) deployment: Option<String>,
    /// Its health as reported to that deployment (`None`: not yet).
    pub(crate) healthy: Option<bool>,
    pub(crate) health_index: u64,
    /// Why the task runner failed the allocation before its tasks started (a template that
    /// does not render), as the task event's message.
    failure: Option<String>,
}

impl Alloc {
    fn terminal(&self) -> bool {
        self.desired != "run" || matches!(self.client.as_str(), "complete" | "failed" | "lost")
    }

    pub(crate) fn failed(&self) -> bool {
        matches!(self.client.as_str(), "failed" | "lost")
    }

    pub(crate) fn running(&self) -> bool {
        self.client == "running"
    }

    pub(crate) fn stub(&self) -> Value {
        let (state, failed) = match self.client.as_str() {
            "pending" => ("pending", false),
            "running" => ("running", false),
            "failed" | "lost" => ("dead", true),
            "unknown" => ("unknown", false),
            _ => ("dead", false),
        };
        let started = if state == "pending" {
            ZERO_TIME.to_owned()
        } else {
            rfc3339(self.create_time)
        };
        let finished = if state == "dead" {
            rfc3339(self.modify_time)
        } else {
            ZERO_TIME.to_owned()
        };
        let task_states: Obj = self
            .tasks
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    json!({
                        "State": state, "Failed": failed, "Restarts": 0,
                        "LastRestart": ZERO_TIME, "StartedAt": started, "FinishedAt": finished,
                        "Events": match &self.failure {
                            None => json!([{"Type": "Received", "Time": self.create_time,
                                    "DisplayMessage": "Task received by client", "Details": {}}]),
                            Some(why) => json!([
                                {"Type": "Received", "Time": self.create_time,
                                 "DisplayMessage": "Task received by client", "Details": {}},
                                {"Type": "Template", "Time": self.create_time,
                                 "DisplayMessage": why, "Details": {}}]),
                        },
                    }),
                )
            })
            .collect();
        json!({
            "ID": self.id, "EvalID": self.eval_id,
            "Name": format!("{}.{}[{}]", self.job_id, self.group, self.name_index),
            "Namespace": self.namespace, "NodeID": NODE_ID, "NodeName": NODE_NAME,
            "JobID": self.job_id, "JobType": self.job_type, "JobVersion": self.job_version,
            "TaskGroup": self.group,
            "DesiredStatus": self.desired, "DesiredDescription": self.desired_desc,
            "ClientStatus": self.client, "ClientDescription": self.client_desc,
            "DesiredTransition": {"Migrate": null, "Reschedule": null, "ForceReschedule": null,
                                  "NoShutdownDelay": null},
            "TaskStates": task_states,
            "DeploymentStatus": match self.healthy {
                None => Value::Null,
                Some(h) => json!({"Healthy": h, "Timestamp": rfc3339(self.modify_time),
                                  "Canary": false, "ModifyIndex": self.health_index}),
            },
            "FollowupEvalID": "",
            "NextAllocation": "", "RescheduleTracker": null, "PreemptedAllocations": null,
            "PreemptedByAllocation": "",
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time, "ModifyTime": self.modify_time,
        })
    }
}

fn client_description(status: &str) -> &'static str {
    match status {
        "pending" => "No tasks have started",
        "running" => "Tasks are running",
        "failed" => "Failed tasks",
        "complete" => "All tasks have completed",
        "lost" => "alloc is lost since its node is down",
        _ => "",
    }
}

struct SummaryMeta {
    create_index: u64,
    modify_index: u64,
    queued: BTreeMap<String, u64>,
}

pub(crate) struct Var {
    namespace: String,
    path: String,
    items: Obj,
    create_index: u64,
    create_time: i64,
    modify_index: u64,
    modify_time: i64,
}

impl Var {
    pub(crate) fn to_json(&self, items: bool) -> Value {
        let mut v = json!({
            "Namespace": self.namespace, "Path": self.path,
            "CreateIndex": self.create_index, "CreateTime": self.create_time,
            "ModifyIndex": self.modify_index, "ModifyTime": self.modify_time,
        });
        if items {
            v["Items"] = Value::Object(self.items.clone());
        }
        v
    }
}

/// Which endpoint family asks, for the wrong-token message (see the module doc).
#[derive(Clone, Copy, PartialEq)]
enum Family {
    Jobs,
    Vars,
}

/// What one reconcile decides for a task group (`scheduler/reconcile` in outline).
#[derive(Default)]
pub(crate) struct GroupPlan {
    pub(crate) ignore: usize,
    pub(crate) inplace: Vec<usize>,
    pub(crate) destructive: Vec<usize>,
    pub(crate) stop: Vec<usize>,
    pub(crate) place: Vec<u64>,
}

pub(crate) struct Nomad {
    /// `None`: ACLs are off.
    pub(crate) acl: Option<Acl>,
    pub(crate) namespaces: BTreeSet<String>,
    node_pools: BTreeSet<String>,
    index: u64,
    pub(crate) index_tx: tokio::sync::watch::Sender<u64>,
    tables: BTreeMap<&'static str, u64>,
    pub(crate) jobs: BTreeMap<(String, String), Value>,
    summaries: BTreeMap<(String, String), SummaryMeta>,
    pub(crate) allocs: Vec<Alloc>,
    evals: Vec<Value>,
    pub(crate) evaluations: usize,
    pub(crate) vars: BTreeMap<(String, String), Var>,
    pub(crate) log: Vec<Request>,
    pub(crate) fail: Option<(usize, u16, String)>,
    pub(crate) placement_failure: bool,
    alloc_status: String,
    pub(crate) deployments: Vec<crate::deploy::Deployment>,
    pub(crate) health: crate::DeploymentHealth,
}

impl Nomad {
    pub(crate) fn new(token: Option<String>) -> Nomad {
        // A fresh cluster has done some raft writes already.
        let start = 10;
        Nomad {
            acl: token.map(|t| Acl::with_management(&t, start)),
            namespaces: ["default".to_owned()].into(),
            node_pools: ["default".to_owned(), "all".to_owned()].into(),
            index: start,
            index_tx: tokio::sync::watch::channel(start).0,
            tables: BTreeMap::new(),
            jobs: BTreeMap::new(),
            summaries: BTreeMap::new(),
            allocs: Vec::new(),
            evals: Vec::new(),
            evaluations: 0,
            vars: BTreeMap::new(),
            log: Vec::new(),
            fail: None,
            placement_failure: false,
            alloc_status: "running".to_owned(),
            deployments: Vec::new(),
            health: crate::DeploymentHealth::Healthy(std::time::Duration::ZERO),
        }
    }

    /// One raft write: the next index, recorded for the tables it touches.
    pub(crate) fn bump(&mut self, tables: &[&'static str]) -> u64 {
        self.index += 1;
        for t in tables {
            self.tables.insert(t, self.index);
        }
        self.index_tx.send_replace(self.index);
        self.index
    }

    fn table(&self, t: &str) -> u64 {
        self.tables.get(t).copied().unwrap_or(0)
    }

    /// Authenticate the caller and check that it may do `need` in namespace `ns`
    /// (`Authenticate` then `ResolveACL` and the endpoint's capability check).
    fn auth(
        &self,
        token: Option<&str>,
        family: Family,
        ns: &str,
        need: Need<'_>,
    ) -> Result<(), Reply> {
        let Some(acl) = &self.acl else {
            return Ok(());
        };
        let Some(caller) = acl.caller(token) else {
            return Err(match family {
                Family::Vars => Reply::err(403, "ACL token not found"),
                Family::Jobs => Reply::err(403, "Permission denied"),
            });
        };
        if acl.allows(&caller, ns, need) {
            Ok(())
        } else {
            Err(Reply::err(403, "Permission denied"))
        }
    }

    /// The ACL read endpoints (`nomad/acl_endpoint.go`); 400 `ACL support disabled` without ACLs.
    fn acl_read(&self, r: &Incoming, rest: &str) -> Reply {
        if r.method != "GET" {
            return Reply::err(405, "Invalid method");
        }
        let Some(acl) = &self.acl else {
            return Reply::err(400, "ACL support disabled");
        };
        let token = r.token.as_deref();
        let answer = if rest == "token/self" {
            acl.token_self(token)
        } else if let Some(name) = rest.strip_prefix("policy/") {
            if name.is_empty() {
                return Reply::err(400, "Missing Policy Name");
            }
            acl.policy(token, name)
        } else if let Some(id) = rest.strip_prefix("role/") {
            if id.is_empty() {
                return Reply::err(400, "missing ACL role ID");
            }
            acl.role(token, id)
        } else {
            return Reply::err(
                501,
                format!(
                    "the Nomad double does not implement /v1/acl/{rest} (see tests/nomad-double)"
                ),
            );
        };
        match answer {
            Ok(v) => Reply::json(v).meta(self.index),
            Err((status, msg)) => Reply::err(status, msg),
        }
    }

    fn region(&self, requested: &str) -> Result<(), Reply> {
        if requested.is_empty() || requested == AGENT_REGION {
            Ok(())
        } else {
            Err(Reply::err(500, "No path to region"))
        }
    }

    pub(crate) fn route(&mut self, r: &Incoming) -> Reply {
        self.tick();
        let m = r.method.as_str();
        let p = r.path.as_str();
        if p == "/v1/jobs" {
            return match m {
                "GET" => self.job_list(r),
                "PUT" | "POST" => self.job_register(r, None),
                _ => Reply::err(405, "Invalid method"),
            };
        }
        if let Some(rest) = p.strip_prefix("/v1/job/") {
            for (suffix, methods) in [
                ("/allocations", &["GET"][..]),
                ("/deployments", &["GET"][..]),
                ("/deployment", &["GET"][..]),
                ("/evaluations", &["GET"][..]),
                ("/plan", &["PUT", "POST"][..]),
                ("/summary", &[][..]),
            ] {
                if let Some(id) = rest.strip_suffix(suffix) {
                    if !methods.is_empty() && !methods.contains(&m) {
                        return Reply::err(405, "Invalid method");
                    }
                    return match suffix {
                        "/allocations" => self.job_allocations(r, id),
                        "/evaluations" => self.job_evaluations(r, id),
                        "/plan" => self.job_plan(r, id),
                        "/deployments" => self.job_deployments_read(r, id, false),
                        "/deployment" => self.job_deployments_read(r, id, true),
                        _ => self.job_summary(r, id),
                    };
                }
            }
            for unsupported in [
                "/evaluate",
                "/periodic/force",
                "/dispatch",
                "/versions",
                "/revert",
                "/stable",
                "/scale",
                "/services",
                "/submission",
                "/actions",
                "/action",
            ] {
                if rest.ends_with(unsupported) {
                    return Reply::err(
                        501,
                        format!("the Nomad double does not implement {p} (see tests/nomad-double)"),
                    );
                }
            }
            return match m {
                "GET" => self.job_read(r, rest),
                "PUT" | "POST" => self.job_register(r, Some(rest)),
                "DELETE" => self.job_delete(r, rest),
                _ => Reply::err(405, "Invalid method"),
            };
        }
        if let Some(id) = p.strip_prefix("/v1/deployment/") {
            if m != "GET" {
                return Reply::err(405, "Invalid method");
            }
            return self.deployment_read(r, id);
        }
        if let Some(id) = p.strip_prefix("/v1/evaluation/") {
            if m != "GET" {
                return Reply::err(405, "Invalid method");
            }
            return self.eval_read(r, id);
        }
        if p == "/v1/vars" {
            if m != "GET" {
                return Reply::err(405, "Invalid method");
            }
            return self.var_list(r);
        }
        if let Some(path) = p.strip_prefix("/v1/var/") {
            if path.is_empty() {
                return Reply::err(400, "missing variable path");
            }
            return match m {
                "GET" => self.var_read(r, path),
                "PUT" | "POST" => self.var_write(r, path),
                "DELETE" => self.var_delete(r, path),
                _ => Reply::err(400, "Invalid method"),
            };
        }
        if let Some(rest) = p.strip_prefix("/v1/acl/") {
            return self.acl_read(r, rest);
        }
        if p == "/v1/status/leader" {
            return Reply::json(json!("127.0.0.1:4647"));
        }
        Reply::err(404, "404 page not found\n")
    }

    // --- deployments (`deploy`) ---------------------------------------------------------

    fn job_deployments_read(&mut self, r: &Incoming, id: &str, latest: bool) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        let out = self.job_deployments(&r.namespace(), id, latest);
        Reply::json(out).meta(self.table("deployment"))
    }

    fn deployment_read(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        let Some((ns, d)) = self.deployment(id) else {
            return Reply::err(404, "deployment not found").meta(self.table("deployment"));
        };
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &ns,
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        Reply::json(d).meta(self.table("deployment"))
    }

    // --- jobs: read ---------------------------------------------------------------------

    fn job_read(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        match self.jobs.get(&key(&r.namespace(), id)) {
            Some(job) => {
                let i = job["ModifyIndex"].as_u64().unwrap_or(0);
                Reply::json(job.clone()).meta(i)
            }
            None => Reply::err(404, "job not found").meta(self.table("jobs")),
        }
    }

    fn job_list(&mut self, r: &Incoming) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["list-jobs"]),
        ) {
            return e;
        }
        if r.has("filter") {
            return Reply::err(400, "the Nomad double does not evaluate filter expressions");
        }
        let ns = r.namespace();
        let prefix = r.q("prefix");
        let with_meta = matches!(r.q("meta"), "true" | "1" | "t" | "T" | "TRUE" | "True");
        let stubs: Vec<Value> = self
            .jobs
            .iter()
            .filter(|((jns, id), _)| (ns == "*" || *jns == ns) && id.starts_with(prefix))
            .map(|((jns, id), job)| {
                let mut stub = json!({
                    "ID": job["ID"], "ParentID": job["ParentID"], "Name": job["Name"],
                    "Namespace": job["Namespace"], "Datacenters": job["Datacenters"],
                    "NodePool": job["NodePool"], "Multiregion": job["Multiregion"],
                    "Type": job["Type"], "Priority": job["Priority"],
                    "Periodic": !job["Periodic"].is_null(),
                    "ParameterizedJob": !job["ParameterizedJob"].is_null(),
                    "Stop": job["Stop"], "Status": job["Status"],
                    "StatusDescription": job["StatusDescription"],
                    "JobSummary": self.summary_json(jns, id).unwrap_or(Value::Null),
                    "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"],
                    "JobModifyIndex": job["JobModifyIndex"], "SubmitTime": job["SubmitTime"],
                });
                if with_meta && !job["Meta"].is_null() {
                    stub["Meta"] = job["Meta"].clone();
                }
                stub
            })
            .collect();
        Reply::json(Value::Array(stubs)).meta(self.table("jobs"))
    }

    fn job_summary(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        let ns = r.namespace();
        match self.summary_json(&ns, id) {
            Some(s) => {
                let i = s["ModifyIndex"].as_u64().unwrap_or(0);
                Reply::json(s).meta(i)
            }
            None => Reply::err(404, "job not found").meta(self.table("job_summary")),
        }
    }

    fn summary_json(&self, ns: &str, id: &str) -> Option<Value> {
        let meta = self.summaries.get(&key(ns, id))?;
        let job = self.jobs.get(&key(ns, id))?;
        let create = job["CreateIndex"].as_u64().unwrap_or(0);
        let mut groups = Obj::new();
        for g in job["TaskGroups"].as_array().into_iter().flatten() {
            let name = g["Name"].as_str().unwrap_or("");
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for a in self.allocs.iter().filter(|a| {
                a.namespace == ns
                    && a.job_id == id
                    && a.job_create_index == create
                    && a.group == name
            }) {
                let bucket = match a.client.as_str() {
                    "pending" => "Starting",
                    "running" => "Running",
                    "complete" => "Complete",
                    "failed" => "Failed",
                    "lost" => "Lost",
                    _ => "Unknown",
                };
                *counts.entry(bucket).or_default() += 1;
            }
            let c = |k: &str| counts.get(k).copied().unwrap_or(0);
            groups.insert(
                name.to_owned(),
                json!({
                    "Queued": meta.queued.get(name).copied().unwrap_or(0),
                    "Complete": c("Complete"), "Failed": c("Failed"), "Running": c("Running"),
                    "Starting": c("Starting"), "Lost": c("Lost"), "Unknown": c("Unknown"),
                }),
            );
        }
        Some(json!({
            "JobID": id, "Namespace": ns, "Summary": groups,
            "Children": {"Pending": 0, "Running": 0, "Dead": 0},
            "CreateIndex": meta.create_index, "ModifyIndex": meta.modify_index,
        }))
    }

    fn job_allocations(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        let ns = r.namespace();
        let all = matches!(r.q("all"), "true" | "1" | "t" | "T" | "TRUE" | "True");
        // state.AllocsByJob: without ?all only the current incarnation's (same CreateIndex).
        let create = self
            .jobs
            .get(&key(&ns, id))
            .and_then(|j| j["CreateIndex"].as_u64());
        let out: Vec<Value> = self
            .allocs
            .iter()
            .filter(|a| a.namespace == ns && a.job_id == id)
            .filter(|a| all || create.is_none_or(|c| a.job_create_index == c))
            .map(Alloc::stub)
            .collect();
        Reply::json(Value::Array(out)).meta(self.table("allocs"))
    }

    fn job_evaluations(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        let ns = r.namespace();
        let out: Vec<Value> = self
            .evals
            .iter()
            .filter(|e| e["Namespace"] == ns.as_str() && e["JobID"] == id)
            .cloned()
            .collect();
        Reply::json(Value::Array(out)).meta(self.table("evals"))
    }

    fn eval_read(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(&["read-job"]),
        ) {
            return e;
        }
        match self.evals.iter().find(|e| e["ID"] == id) {
            Some(e) => {
                let i = e["ModifyIndex"].as_u64().unwrap_or(0);
                Reply::json(e.clone()).meta(i)
            }
            None => Reply::err(404, "eval not found").meta(self.table("evals")),
        }
    }

    // --- jobs: register -----------------------------------------------------------------

    fn job_register(&mut self, r: &Incoming, path_id: Option<&str>) -> Reply {
        const ST: &str = "JobRegisterRequest";
        let body = match decode_body(&r.body, "api.JobRegisterRequest") {
            Ok(b) => b,
            Err(e) => return Reply::err(400, e),
        };
        let b = &body;
        let mut d = Dec::default();
        let enforce = d.b(b, ST, "EnforceIndex").unwrap_or(false);
        let jmi = d.u(b, ST, "JobModifyIndex").unwrap_or(0);
        d.b(b, ST, "PolicyOverride");
        let preserve_counts = d.b(b, ST, "PreserveCounts").unwrap_or(false);
        let preserve_resources = d.b(b, ST, "PreserveResources").unwrap_or(false);
        let eval_priority = d.i(b, ST, "EvalPriority").unwrap_or(0);
        d.val(b, ST, "Submission", K::Any);
        let body_region = d.s(b, ST, "Region").unwrap_or_default();
        let body_ns = d.s(b, ST, "Namespace").unwrap_or_default();
        let secret = d.s(b, ST, "SecretID").unwrap_or_default();
        let job_src = d.obj(b, ST, "Job", "api.Job");
        let (request_region, job_region) = region_for_job(job_src, r.q("region"), &body_region);
        let namespace = namespace_for_job(job_src, r.q("namespace"), &body_ns);
        let job = job_src.map(|j| canonical_job(&mut d, j, &namespace, &job_region));
        if let Some(e) = d.err {
            return Reply::err(400, e);
        }
        let (Some(job_src), Some(mut job)) = (job_src, job) else {
            return Reply::err(400, "Job must be specified");
        };
        if get(job_src, "ID").is_none() {
            return Reply::err(400, "Job ID hasn't been provided");
        }
        let id = job["ID"].as_str().unwrap_or("").to_owned();
        if let Some(pid) = path_id
            && !pid.is_empty()
            && pid != id
        {
            return Reply::err(400, "Job ID does not match name");
        }
        if job["Type"] == "system"
            && job["TaskGroups"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|g| !g["Scaling"].is_null())
        {
            return Reply::err(
                400,
                "Task groups with job type system do not support scaling blocks",
            );
        }
        if eval_priority != 0 && !(1..=100).contains(&eval_priority) {
            return Reply::err(400, "Eval priority must be between 1 and 100 inclusively");
        }
        if let Err(e) = self.region(&request_region) {
            return e;
        }
        let token = r
            .token
            .clone()
            .or_else(|| (!secret.is_empty()).then_some(secret));
        if let Err(e) = self.auth(
            token.as_deref(),
            Family::Jobs,
            &namespace,
            Need::Namespace(&["submit-job", "register-job"]),
        ) {
            return e;
        }
        if let Err(e) = self.admit(&job) {
            return Reply::err(500, e);
        }
        if let Some(acl) = &self.acl {
            job.insert(
                "NomadTokenID".into(),
                json!(acl.accessor(token.as_deref()).unwrap_or_default()),
            );
        }
        let opts = RegisterOpts {
            enforce: enforce.then_some(jmi),
            preserve_counts,
            preserve_resources,
            eval_priority,
        };
        match self.register(&namespace, job, &opts) {
            Ok(resp) => {
                let i = resp["Index"].as_u64().unwrap_or(0);
                Reply::json(resp).index(i)
            }
            Err(e) => Reply::err(500, e),
        }
    }

    /// Admission validators (§2.1 step 3): namespace, node pool, `Job.Validate`, priority.
    fn admit(&self, job: &Obj) -> Result<(), String> {
        let mut errs = Vec::new();
        let id = job["ID"].as_str().unwrap_or("");
        let ns = job["Namespace"].as_str().unwrap_or("");
        if !self.namespaces.contains(ns) {
            errs.push(format!("job {id:?} is in nonexistent namespace {ns:?}"));
        }
        let pool = job["NodePool"].as_str().unwrap_or("");
        if !self.node_pools.contains(pool) {
            errs.push(format!("job {id:?} is in nonexistent node pool {pool:?}"));
        }
        errs.extend(validate_job(job));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(multierror(&errs))
        }
    }

    /// `Job.Register` from the EnforceIndex check on (§2.1 steps 5–9, §3).
    fn register(&mut self, ns: &str, mut job: Obj, opts: &RegisterOpts) -> Result<Value, String> {
        let id = job["ID"].as_str().unwrap_or("").to_owned();
        let k = key(ns, &id);
        let existing = self.jobs.get(&k).cloned();
        if let Some(n) = opts.enforce {
            const P: &str = "Enforcing job modify index";
            match &existing {
                Some(e) => {
                    let cur = e["JobModifyIndex"].as_u64().unwrap_or(0);
                    if n == 0 {
                        return Err(format!("{P} 0: job already exists"));
                    } else if n != cur {
                        return Err(format!(
                            "{P} {n}: job exists with conflicting job modify index: {cur}"
                        ));
                    }
                }
                None if n != 0 => return Err(format!("{P} {n}: job does not exist")),
                None => {}
            }
        }
        if let Some(e) = &existing {
            validate_job_update(e, &job)?;
            if opts.preserve_counts || opts.preserve_resources {
                preserve(e, &mut job, opts.preserve_counts, opts.preserve_resources);
            }
        }
        let candidate = Value::Object(job.clone());
        let periodic_or_param = is_periodic_or_param(&candidate);
        let changed = existing
            .as_ref()
            .is_none_or(|e| spec_of(e) != spec_of(&candidate));
        let now = now_ns();
        let priority = if opts.eval_priority > 0 {
            opts.eval_priority
        } else {
            job["Priority"].as_i64().unwrap_or(50)
        };
        let mut resp = json!({
            "EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "Warnings": "",
            "Index": 0, "LastContact": 0, "KnownLeader": false, "NextToken": "",
        });
        let mut eval_id = None;
        if changed {
            let index = self.bump(&["jobs", "job_summary"]);
            let (create, version) = match &existing {
                Some(e) => (
                    e["CreateIndex"].as_u64().unwrap_or(index),
                    e["Version"].as_u64().unwrap_or(0) + 1,
                ),
                None => (index, 0),
            };
            job.insert("CreateIndex".into(), json!(create));
            job.insert("ModifyIndex".into(), json!(index));
            job.insert("JobModifyIndex".into(), json!(index));
            job.insert("Version".into(), json!(version));
            job.insert("SubmitTime".into(), json!(now));
            job.insert("Stable".into(), json!(false));
            job.insert("StatusDescription".into(), json!(""));
            job.insert("Status".into(), json!("pending"));
            self.jobs.insert(k.clone(), Value::Object(job.clone()));
            let summary = self.summaries.entry(k.clone()).or_insert(SummaryMeta {
                create_index: create,
                modify_index: index,
                queued: BTreeMap::new(),
            });
            summary.modify_index = index;
            if !periodic_or_param {
                let eid = self.new_eval(index, ns, &job, "job-register", index, priority);
                resp["EvalID"] = json!(eid);
                resp["EvalCreateIndex"] = json!(index);
                eval_id = Some(eid);
            }
            resp["JobModifyIndex"] = json!(index);
            resp["Index"] = json!(index);
            self.refresh_status(ns, &id, index);
        } else {
            let e = existing.as_ref().expect("unchanged implies existing");
            let modify = e["ModifyIndex"].as_u64().unwrap_or(0);
            // Nomad ≥ 1.11.2 answers the existing ModifyIndex here (§3).
            resp["JobModifyIndex"] = json!(modify);
            if periodic_or_param {
                resp["Index"] = json!(modify);
            } else {
                let index = self.bump(&["evals"]);
                let jmi = e["JobModifyIndex"].as_u64().unwrap_or(0);
                let existing_obj = e.as_object().expect("job object").clone();
                let eid = self.new_eval(index, ns, &existing_obj, "job-register", jmi, priority);
                resp["EvalID"] = json!(eid);
                resp["EvalCreateIndex"] = json!(index);
                resp["Index"] = json!(index);
                eval_id = Some(eid);
            }
        }
        if let Some(eid) = eval_id {
            self.process(ns, &id, &eid);
        }
        Ok(resp)
    }

    pub(crate) fn register_out_of_band(
        &mut self,
        ns: &str,
        id: &str,
        edited: Value,
    ) -> Result<(), String> {
        let Value::Object(src) = edited else {
            return Err("the edited job is not a JSON object".into());
        };
        let mut d = Dec::default();
        let region = src
            .get("Region")
            .and_then(Value::as_str)
            .unwrap_or(AGENT_REGION)
            .to_owned();
        let mut job = canonical_job(&mut d, &src, ns, &region);
        if let Some(e) = d.err {
            return Err(e);
        }
        if job["ID"] != id {
            return Err("edit_job must not change the job ID".into());
        }
        if let Some(t) = src.get("NomadTokenID") {
            job.insert("NomadTokenID".into(), t.clone());
        }
        self.admit(&job)?;
        self.register(ns, job, &RegisterOpts::default()).map(|_| ())
    }

    fn new_eval(
        &mut self,
        index: u64,
        ns: &str,
        job: &Obj,
        trigger: &str,
        jmi: u64,
        priority: i64,
    ) -> String {
        let id = uuid();
        let now = now_ns();
        self.evals.push(json!({
            "ID": id, "Namespace": ns, "Priority": priority, "Type": job["Type"],
            "TriggeredBy": trigger, "JobID": job["ID"], "JobModifyIndex": jmi, "NodeID": "",
            "NodeModifyIndex": 0, "DeploymentID": "", "Status": "pending",
            "StatusDescription": "", "Wait": 0, "WaitUntil": ZERO_TIME, "NextEval": "",
            "PreviousEval": "", "BlockedEval": "", "RelatedEvals": null, "FailedTGAllocs": null,
            "ClassEligibility": null, "QuotaLimitReached": "", "EscapedComputedClass": false,
            "AnnotatePlan": false, "QueuedAllocations": null, "LeaderACL": "",
            "SnapshotIndex": 0, "CreateIndex": index, "ModifyIndex": index,
            "CreateTime": now, "ModifyTime": now,
        }));
        if trigger.starts_with("job-") {
            self.evaluations += 1;
        }
        id
    }

    // --- jobs: deregister ---------------------------------------------------------------

    fn job_delete(&mut self, r: &Incoming, id: &str) -> Reply {
        let mut purge = false;
        for flag in ["purge", "global", "no_shutdown_delay"] {
            let v = r.q(flag);
            if v.is_empty() {
                continue;
            }
            match parse_go_bool(v) {
                Some(b) => {
                    if flag == "purge" {
                        purge = b;
                    }
                }
                None => {
                    return Reply::err(
                        500,
                        format!(
                            "Failed to parse value of {flag:?} ({v}) as a bool: strconv.ParseBool: parsing {v:?}: invalid syntax"
                        ),
                    );
                }
            }
        }
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        let need: &'static [&'static str] = if purge {
            &["submit-job", "purge-job"]
        } else {
            &["submit-job", "purge-job", "deregister-job"]
        };
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Jobs,
            &r.namespace(),
            Need::Namespace(need),
        ) {
            return e;
        }
        let resp = self.deregister(&r.namespace(), id, purge);
        let i = resp["Index"].as_u64().unwrap_or(0);
        Reply::json(resp).index(i)
    }

    pub(crate) fn deregister(&mut self, ns: &str, id: &str, purge: bool) -> Value {
        let k = key(ns, id);
        let mut resp = json!({
            "EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "VolumeEvalID": "",
            "VolumeEvalIndex": 0, "Index": 0, "LastContact": 0, "KnownLeader": false,
            "NextToken": "",
        });
        let Some(job) = self.jobs.get(&k).cloned() else {
            return resp;
        };
        let index = self.bump(&["jobs", "job_summary", "evals"]);
        let obj = job.as_object().expect("job object").clone();
        let mut eval_id = None;
        if !is_periodic_or_param(&job) {
            let priority = job["Priority"].as_i64().unwrap_or(50);
            eval_id = Some(self.new_eval(index, ns, &obj, "job-deregister", index, priority));
        }
        if purge {
            self.jobs.remove(&k);
            self.summaries.remove(&k);
        } else {
            let mut stopped = obj;
            stopped.insert("Stop".into(), json!(true));
            let version = stopped["Version"].as_u64().unwrap_or(0) + 1;
            stopped.insert("Version".into(), json!(version));
            stopped.insert("ModifyIndex".into(), json!(index));
            stopped.insert("JobModifyIndex".into(), json!(index));
            stopped.insert("Stable".into(), json!(false));
            self.jobs.insert(k.clone(), Value::Object(stopped));
            self.refresh_status(ns, id, index);
        }
        resp["EvalID"] = json!(eval_id.clone().unwrap_or_default());
        resp["EvalCreateIndex"] = json!(index);
        resp["JobModifyIndex"] = json!(index);
        resp["Index"] = json!(index);
        if let Some(eid) = eval_id {
            self.process(ns, id, &eid);
        }
        resp
    }

    // --- jobs: plan ---------------------------------------------------------------------

    fn job_plan(&mut self, r: &Incoming, path_id: &str) -> Reply {
        const ST: &str = "JobPlanRequest";
        let body = match decode_body(&r.body, "api.JobPlanRequest") {
            Ok(b) => b,
            Err(e) => return Reply::err(400, e),
        };
        let b = &body;
        let mut d = Dec::default();
        let want_diff = d.b(b, ST, "Diff").unwrap_or(false);
        d.b(b, ST, "PolicyOverride");
        let body_region = d.s(b, ST, "Region").unwrap_or_default();
        let body_ns = d.s(b, ST, "Namespace").unwrap_or_default();
        let secret = d.s(b, ST, "SecretID").unwrap_or_default();
        let job_src = d.obj(b, ST, "Job", "api.Job");
        let (request_region, job_region) = region_for_job(job_src, r.q("region"), &body_region);
        let namespace = namespace_for_job(job_src, r.q("namespace"), &body_ns);
        let job = job_src.map(|j| canonical_job(&mut d, j, &namespace, &job_region));
        if let Some(e) = d.err {
            return Reply::err(400, e);
        }
        let (Some(job_src), Some(mut job)) = (job_src, job) else {
            return Reply::err(400, "Job must be specified");
        };
        if get(job_src, "ID").is_none() {
            return Reply::err(400, "Job must have a valid ID");
        }
        let id = job["ID"].as_str().unwrap_or("").to_owned();
        if !path_id.is_empty() && path_id != id {
            return Reply::err(400, "Job ID does not match");
        }
        if let Err(e) = self.region(&request_region) {
            return e;
        }
        let token = r
            .token
            .clone()
            .or_else(|| (!secret.is_empty()).then_some(secret));
        if let Err(e) = self.auth(
            token.as_deref(),
            Family::Jobs,
            &namespace,
            Need::Namespace(&["submit-job", "plan-job"]),
        ) {
            return e;
        }
        if let Err(e) = self.admit(&job) {
            return Reply::err(500, e);
        }
        if let Some(acl) = &self.acl {
            job.insert(
                "NomadTokenID".into(),
                json!(acl.accessor(token.as_deref()).unwrap_or_default()),
            );
        }
        let existing = self.jobs.get(&key(&namespace, &id)).cloned();
        if let Some(e) = &existing
            && let Err(msg) = validate_job_update(e, &job)
        {
            return Reply::err(500, msg);
        }
        let jmi = existing
            .as_ref()
            .and_then(|e| e["JobModifyIndex"].as_u64())
            .unwrap_or(0);
        // The planned job as the scheduler would see it in its snapshot.
        let mut candidate = job.clone();
        if let Some(e) = &existing {
            for f in SERVER_FIELDS {
                candidate.insert(f.into(), e[f].clone());
            }
        }
        let candidate = Value::Object(candidate);
        let plan = self.reconcile(&namespace, &id, Some(&candidate));
        let mut tg_updates = Obj::new();
        let mut failed = Obj::new();
        for (g, p) in &plan {
            tg_updates.insert(
                g.clone(),
                json!({
                    "Ignore": p.ignore, "Place": p.place.len(), "Migrate": 0,
                    "Stop": p.stop.len(), "InPlaceUpdate": p.inplace.len(),
                    "DestructiveUpdate": p.destructive.len(), "Canary": 0, "Preemptions": 0,
                    "Reconnect": 0, "Disconnect": 0, "RescheduleNow": 0, "RescheduleLater": 0,
                }),
            );
            let wanted = p.place.len() + p.destructive.len();
            if self.placement_failure && wanted > 0 {
                failed.insert(g.clone(), alloc_metric(wanted));
            }
        }
        let diff = want_diff.then(|| {
            let old = existing.as_ref().and_then(Value::as_object);
            let mut jd = job_diff(old, &job);
            annotate(&mut jd, &plan);
            jd.to_json()
        });
        let resp = json!({
            "Annotations": {"DesiredTGUpdates": tg_updates, "PreemptedAllocs": null},
            "FailedTGAllocs": if failed.is_empty() { Value::Null } else { Value::Object(failed) },
            "JobModifyIndex": jmi, "CreatedEvals": null,
            "Diff": diff.unwrap_or(Value::Null),
            "NextPeriodicLaunch": ZERO_TIME, "Warnings": "", "Index": jmi,
        });
        Reply::json(resp).index(jmi)
    }

    // --- the simulated scheduler --------------------------------------------------------

    /// What the reconciler would do for this job (None: purged) given the live allocations.
    fn reconcile(&self, ns: &str, id: &str, job: Option<&Value>) -> BTreeMap<String, GroupPlan> {
        let mut out: BTreeMap<String, GroupPlan> = BTreeMap::new();
        let live: Vec<usize> = self
            .allocs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.namespace == ns && a.job_id == id && !a.terminal())
            .map(|(i, _)| i)
            .collect();
        let running = job.filter(|j| !j["Stop"].as_bool().unwrap_or(false));
        let Some(job) = running else {
            for i in live {
                out.entry(self.allocs[i].group.clone())
                    .or_default()
                    .stop
                    .push(i);
            }
            if let Some(j) = job {
                for g in j["TaskGroups"].as_array().into_iter().flatten() {
                    out.entry(g["Name"].as_str().unwrap_or("").to_owned())
                        .or_default();
                }
            }
            return out;
        };
        let spec = spec_of(job);
        let create = job["CreateIndex"].as_u64().unwrap_or(0);
        let groups: Vec<&Value> = job["TaskGroups"].as_array().into_iter().flatten().collect();
        let names: BTreeSet<&str> = groups.iter().filter_map(|g| g["Name"].as_str()).collect();
        for &i in &live {
            let a = &self.allocs[i];
            if a.job_create_index != create || !names.contains(a.group.as_str()) {
                out.entry(a.group.clone()).or_default().stop.push(i);
            }
        }
        for g in groups {
            let name = g["Name"].as_str().unwrap_or("").to_owned();
            let count = g["Count"].as_i64().unwrap_or(0).max(0) as usize;
            let mut existing: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| {
                    let a = &self.allocs[i];
                    a.job_create_index == create && a.group == name
                })
                .collect();
            existing.sort_by_key(|&i| self.allocs[i].name_index);
            let plan = out.entry(name.clone()).or_default();
            let keep = count.min(existing.len());
            plan.stop.extend_from_slice(&existing[keep..]);
            let mut used = BTreeSet::new();
            for &i in &existing[..keep] {
                let a = &self.allocs[i];
                used.insert(a.name_index);
                if a.job_spec == spec {
                    plan.ignore += 1;
                } else if tasks_updated(&a.job_spec, &spec, &name) {
                    plan.destructive.push(i);
                } else {
                    plan.inplace.push(i);
                }
            }
            plan.place = (0u64..)
                .filter(|n| !used.contains(n))
                .take(count - keep)
                .collect();
        }
        out
    }

    /// Processes an evaluation at once, one raft index after the write that created it.
    fn process(&mut self, ns: &str, id: &str, eval_id: &str) {
        let job = self.jobs.get(&key(ns, id)).cloned();
        let plan = self.reconcile(ns, id, job.as_ref());
        let index = self.bump(&["evals", "allocs", "job_summary"]);
        let now = now_ns();
        let spec = job.as_ref().map(spec_of).unwrap_or(Value::Null);
        let mut queued: BTreeMap<String, u64> = BTreeMap::new();
        let mut failed = Obj::new();
        let mut placed: Vec<(String, String)> = Vec::new();
        for (group, p) in &plan {
            for &i in &p.stop {
                let a = &mut self.allocs[i];
                a.desired = "stop".into();
                a.desired_desc = "alloc not needed due to job update".into();
                if !matches!(a.client.as_str(), "complete" | "failed" | "lost") {
                    a.client = "complete".into();
                    a.client_desc = client_description("complete").into();
                }
                a.modify_index = index;
                a.modify_time = now;
            }
            let Some(job) = &job else { continue };
            for &i in &p.inplace {
                let a = &mut self.allocs[i];
                a.job_spec = spec.clone();
                a.job_version = job["Version"].as_u64().unwrap_or(0);
                a.modify_index = index;
                a.modify_time = now;
            }
            let mut failures = 0;
            for &i in &p.destructive {
                if self.placement_failure {
                    failures += 1;
                    continue;
                }
                let slot = self.allocs[i].name_index;
                let a = &mut self.allocs[i];
                a.desired = "stop".into();
                a.desired_desc = "alloc is being updated due to job update".into();
                a.client = "complete".into();
                a.client_desc = client_description("complete").into();
                a.modify_index = index;
                a.modify_time = now;
                let aid = self.place(job, &spec, group, slot, eval_id, index);
                placed.push((group.clone(), aid));
            }
            for &slot in &p.place {
                if self.placement_failure {
                    failures += 1;
                    continue;
                }
                let aid = self.place(job, &spec, group, slot, eval_id, index);
                placed.push((group.clone(), aid));
            }
            if failures > 0 {
                failed.insert(group.clone(), alloc_metric(failures));
            }
            queued.insert(group.clone(), failures as u64);
        }
        // Older blocked evaluations of this job are superseded.
        for e in self.evals.iter_mut() {
            if e["Namespace"] == ns && e["JobID"] == id && e["Status"] == "blocked" {
                e["Status"] = json!("canceled");
                e["StatusDescription"] = json!("evaluation is outdated");
                e["ModifyIndex"] = json!(index);
            }
        }
        let deployment = job
            .as_ref()
            .and_then(|j| self.deploy(j, &placed, index))
            .unwrap_or_default();
        let blocked = (!failed.is_empty()).then(uuid);
        if let Some(bid) = &blocked {
            let mut b = self
                .evals
                .iter()
                .find(|e| e["ID"] == eval_id)
                .cloned()
                .unwrap_or(Value::Null);
            b["ID"] = json!(bid);
            b["Status"] = json!("blocked");
            b["StatusDescription"] = json!("created to place remaining allocations");
            b["TriggeredBy"] = json!("queued-allocs");
            b["PreviousEval"] = json!(eval_id);
            b["CreateIndex"] = json!(index);
            b["ModifyIndex"] = json!(index);
            self.evals.push(b);
        }
        if let Some(e) = self.evals.iter_mut().find(|e| e["ID"] == eval_id) {
            e["Status"] = json!("complete");
            e["ModifyIndex"] = json!(index);
            e["ModifyTime"] = json!(now);
            e["QueuedAllocations"] = json!(queued);
            e["FailedTGAllocs"] = if failed.is_empty() {
                Value::Null
            } else {
                Value::Object(failed)
            };
            e["BlockedEval"] = json!(blocked.unwrap_or_default());
            e["DeploymentID"] = json!(deployment);
        }
        if let Some(s) = self.summaries.get_mut(&key(ns, id)) {
            s.queued = queued;
            s.modify_index = index;
        }
        self.refresh_status(ns, id, index);
    }

    fn place(
        &mut self,
        job: &Value,
        spec: &Value,
        group: &str,
        slot: u64,
        eval_id: &str,
        index: u64,
    ) -> String {
        let now = now_ns();
        let tasks = job["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["Name"] == group)
            .map(|g| {
                g["Tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["Name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let failure = self.template_failure(job, group);
        let status = match failure {
            Some(_) => "failed".to_owned(),
            None => self.alloc_status.clone(),
        };
        let id = uuid();
        self.allocs.push(Alloc {
            id: id.clone(),
            eval_id: eval_id.to_owned(),
            name_index: slot,
            namespace: job["Namespace"].as_str().unwrap_or("").to_owned(),
            job_id: job["ID"].as_str().unwrap_or("").to_owned(),
            job_type: job["Type"].as_str().unwrap_or("").to_owned(),
            job_version: job["Version"].as_u64().unwrap_or(0),
            job_create_index: job["CreateIndex"].as_u64().unwrap_or(0),
            group: group.to_owned(),
            tasks,
            job_spec: spec.clone(),
            desired: "run".into(),
            desired_desc: String::new(),
            client_desc: client_description(&status).into(),
            client: status,
            create_index: index,
            modify_index: index,
            create_time: now,
            modify_time: now,
            deployment: None,
            healthy: None,
            health_index: 0,
            failure,
        });
        id
    }

    /// The template hook's verdict on a group's env templates (`Envvars: true`), rendered
    /// against the job's Variables the way `client/allocrunner/taskrunner/template` does: the
    /// output is parsed with hashicorp/go-envparse, whose keys are `[A-Za-z0-9/_.]`, and values
    /// come from `toJSON`, which leaves Go's `\a`, `\v`, `\xNN` for other control characters
    /// (not JSON, so the parse fails too). `None` when every template renders.
    fn template_failure(&self, job: &Value, group: &str) -> Option<String> {
        let ns = job["Namespace"].as_str().unwrap_or("default");
        let tasks = job["TaskGroups"]
            .as_array()?
            .iter()
            .find(|g| g["Name"] == group)?["Tasks"]
            .as_array()?;
        for task in tasks {
            for t in task["Templates"].as_array().into_iter().flatten() {
                if t["Envvars"] != json!(true) {
                    continue;
                }
                let text = t["EmbeddedTmpl"].as_str().unwrap_or_default();
                let items = text
                    .split("nomadVar \"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|path| self.vars.get(&(ns.to_owned(), path.to_owned())))
                    .map(|v| v.items.clone())
                    .unwrap_or_default();
                for line in text.lines().filter(|l| !l.trim_start().starts_with("{{")) {
                    let Some((k, expr)) = line.split_once('=') else {
                        continue;
                    };
                    let bad_key = k.is_empty()
                        || !k
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.'));
                    let name = expr
                        .split('"')
                        .nth(1)
                        .or_else(|| expr.split_whitespace().nth(1)?.strip_prefix('.'))
                        .unwrap_or_default();
                    let bad_value = items.get(name).and_then(Value::as_str).is_some_and(|v| {
                        v.chars().any(|c| {
                            c.is_ascii_control()
                                && !matches!(c, '\u{8}' | '\u{c}' | '\n' | '\r' | '\t')
                        })
                    });
                    if bad_key || bad_value {
                        return Some(format!(
                            "Template failed: error parsing env template \"{}\": line {line:?} is not KEY=VALUE",
                            t["DestPath"].as_str().unwrap_or_default()
                        ));
                    }
                }
            }
        }
        None
    }

    /// `state_store.getJobStatus`; a change moves ModifyIndex only.
    fn refresh_status(&mut self, ns: &str, id: &str, index: u64) {
        let Some(job) = self.jobs.get(&key(ns, id)) else {
            return;
        };
        let stop = job["Stop"].as_bool().unwrap_or(false);
        let status = if job["Type"] == "system" || is_periodic_or_param(job) {
            if stop { "dead" } else { "running" }
        } else {
            let mine = |a: &&Alloc| a.namespace == ns && a.job_id == id;
            let any_alloc = self.allocs.iter().any(|a| mine(&a));
            let live_alloc = self.allocs.iter().filter(mine).any(|a| !a.terminal());
            let evals: Vec<&Value> = self
                .evals
                .iter()
                .filter(|e| e["Namespace"] == ns && e["JobID"] == id)
                .collect();
            let live_eval = evals.iter().any(|e| {
                !matches!(
                    e["Status"].as_str(),
                    Some("complete" | "failed" | "canceled")
                )
            });
            if live_alloc {
                "running"
            } else if live_eval {
                "pending"
            } else if stop || any_alloc || !evals.is_empty() {
                "dead"
            } else {
                "pending"
            }
        };
        if job["Status"] != status {
            let job = self.jobs.get_mut(&key(ns, id)).expect("job present");
            job["Status"] = json!(status);
            job["ModifyIndex"] = json!(index);
            self.tables.insert("jobs", index);
        }
    }

    pub(crate) fn set_alloc_status(&mut self, status: &str) {
        self.alloc_status = status.to_owned();
        let index = self.bump(&["allocs", "job_summary"]);
        let now = now_ns();
        let mut touched = BTreeSet::new();
        for a in self.allocs.iter_mut().filter(|a| !a.terminal()) {
            a.client = status.to_owned();
            a.client_desc = client_description(status).into();
            a.modify_index = index;
            a.modify_time = now;
            touched.insert((a.namespace.clone(), a.job_id.clone()));
        }
        for (ns, id) in touched {
            if let Some(s) = self.summaries.get_mut(&key(&ns, &id)) {
                s.modify_index = index;
            }
            self.refresh_status(&ns, &id, index);
        }
    }

    // --- variables ----------------------------------------------------------------------

    fn var_read(&mut self, r: &Incoming, path: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Vars,
            &r.namespace(),
            Need::Variable(path, "read"),
        ) {
            return e;
        }
        match self.vars.get(&key(&r.namespace(), path)) {
            Some(v) => Reply::json(v.to_json(true)).meta(v.modify_index),
            None => Reply::err(404, "variable not found").meta(self.table("variables")),
        }
    }

    fn var_list(&mut self, r: &Incoming) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if r.has("filter") {
            return Reply::err(400, "the Nomad double does not evaluate filter expressions");
        }
        let index = self.table("variables");
        // An unknown token is refused; entries the caller cannot `list` are dropped, not
        // refused (`Variables.List` filters with `AllowVariableOperation`).
        let caller = match &self.acl {
            None => None,
            Some(acl) => match acl.caller(r.token.as_deref()) {
                Some(c) => Some((acl, c)),
                None => return Reply::err(403, "ACL token not found"),
            },
        };
        let ns = r.namespace();
        let prefix = r.q("prefix");
        let out: Vec<Value> = self
            .vars
            .values()
            .filter(|v| (ns == "*" || v.namespace == ns) && v.path.starts_with(prefix))
            .filter(|v| {
                caller.as_ref().is_none_or(|(acl, c)| {
                    acl.allows(c, &v.namespace, Need::Variable(&v.path, "list"))
                })
            })
            .map(|v| v.to_json(false))
            .collect();
        Reply::json(Value::Array(out)).meta(index)
    }

    fn var_cas(&self, r: &Incoming) -> Result<Option<u64>, Reply> {
        let cas = r.q("cas");
        if cas.is_empty() {
            return Ok(None);
        }
        cas.parse::<u64>().map(Some).map_err(|_| {
            Reply::err(
                400,
                format!("can not parse cas: strconv.ParseUint: parsing {cas:?}: invalid syntax"),
            )
        })
    }

    /// The 409 of a failed check-and-set: the current variable, or its zero value.
    fn var_conflict(&self, ns: &str, path: &str) -> Reply {
        let (body, index) = match self.vars.get(&key(ns, path)) {
            Some(v) => (v.to_json(true), v.modify_index),
            None => (
                json!({"Namespace": ns, "Path": path, "CreateIndex": 0, "CreateTime": 0,
                       "ModifyIndex": 0, "ModifyTime": 0}),
                0,
            ),
        };
        let mut reply = Reply::json(body).status(409);
        reply.index = Some(index);
        reply.sniffed = true;
        reply
    }

    fn var_write(&mut self, r: &Incoming, path: &str) -> Reply {
        const ST: &str = "VariableDecrypted";
        let body = match decode_body(&r.body, "structs.VariableDecrypted") {
            Ok(b) => b,
            Err(e) => return Reply::err(400, e),
        };
        let mut d = Dec::default();
        let body_ns = d.s(&body, ST, "Namespace").unwrap_or_default();
        d.s(&body, ST, "Path");
        let items = d.val(&body, ST, "Items", K::StrMap);
        for f in ["CreateIndex", "ModifyIndex"] {
            d.u(&body, ST, f);
        }
        for f in ["CreateTime", "ModifyTime"] {
            d.i(&body, ST, f);
        }
        if let Some(e) = d.err {
            return Reply::err(400, e);
        }
        let items = match items {
            Some(Value::Object(m)) if !m.is_empty() => m,
            _ => return Reply::err(400, "variable missing required Items object"),
        };
        let cas = match self.var_cas(r) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let ns = if body_ns.is_empty() {
            r.namespace()
        } else {
            body_ns
        };
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Vars,
            &ns,
            Need::Variable(path, "write"),
        ) {
            return e;
        }
        if let Err(e) = validate_variable(&ns, path, &items) {
            return Reply::err(400, format!("RPC Error:: 400,{e}"));
        }
        let k = key(&ns, path);
        if let Some(c) = cas {
            let cur = self.vars.get(&k).map(|v| v.modify_index);
            let ok = match (c, cur) {
                (0, None) => true,
                (0, Some(_)) => false,
                (n, Some(m)) => n == m,
                (_, None) => false,
            };
            if !ok {
                return self.var_conflict(&ns, path);
            }
        }
        let index = self.bump(&["variables"]);
        let now = now_ns();
        let (create_index, create_time) = self
            .vars
            .get(&k)
            .map(|v| (v.create_index, v.create_time))
            .unwrap_or((index, now));
        let v = Var {
            namespace: ns,
            path: path.to_owned(),
            items,
            create_index,
            create_time,
            modify_index: index,
            modify_time: now,
        };
        let out = v.to_json(true);
        self.vars.insert(k, v);
        Reply::json(out).index(index)
    }

    fn var_delete(&mut self, r: &Incoming, path: &str) -> Reply {
        let cas = match self.var_cas(r) {
            Ok(c) => c,
            Err(e) => return e,
        };
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(
            r.token.as_deref(),
            Family::Vars,
            &r.namespace(),
            Need::Variable(path, "destroy"),
        ) {
            return e;
        }
        let ns = r.namespace();
        let k = key(&ns, path);
        if let Some(c) = cas {
            let cur = self.vars.get(&k).map(|v| v.modify_index);
            let ok = match (c, cur) {
                (0, None) => true,
                (0, Some(_)) => false,
                (n, Some(m)) => n == m,
                (_, None) => false,
            };
            if !ok {
                return self.var_conflict(&ns, path);
            }
        }
        let index = self.bump(&["variables"]);
        self.vars.remove(&k);
        Reply::empty(204).index(index)
    }
}

#[derive(Default)]
struct RegisterOpts {
    enforce: Option<u64>,
    preserve_counts: bool,
    preserve_resources: bool,
    eval_priority: i64,
}

fn alloc_metric(failures: usize) -> Value {
    json!({
        "NodesEvaluated": 1, "NodesFiltered": 0, "NodesInPool": 1,
        "NodesAvailable": {"dc1": 1}, "ClassFiltered": null, "ConstraintFiltered": null,
        "NodesExhausted": 1, "ClassExhausted": null, "DimensionExhausted": {"memory": 1},
        "QuotaExhausted": null, "ResourcesExhausted": null, "ScoreMetaData": null,
        "AllocationTime": 21000, "CoalescedFailures": failures.saturating_sub(1),
    })
}

/// `command/agent/job_endpoint.go: regionForJob` → (request region, job region).
fn region_for_job(job: Option<&Obj>, query: &str, body: &str) -> (String, String) {
    let mut req = String::new();
    if !query.is_empty() {
        req = query.to_owned();
    }
    if !body.is_empty() {
        req = body.to_owned();
    }
    if req.is_empty()
        && let Some(r) = job.and_then(|j| get(j, "Region")).and_then(Value::as_str)
    {
        req = r.to_owned();
    }
    if req.is_empty() || req == "global" {
        req = AGENT_REGION.to_owned();
    }
    (req.clone(), req)
}

/// `namespaceForJob`: query > request body > job > `default`.
fn namespace_for_job(job: Option<&Obj>, query: &str, body: &str) -> String {
    if !query.is_empty() {
        return query.to_owned();
    }
    if !body.is_empty() {
        return body.to_owned();
    }
    match job
        .and_then(|j| get(j, "Namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => ns.to_owned(),
        _ => "default".to_owned(),
    }
}

fn is_periodic_or_param(job: &Value) -> bool {
    !job["Periodic"].is_null()
        || (!job["ParameterizedJob"].is_null() && !job["Dispatched"].as_bool().unwrap_or(false))
}

/// The job without the fields `SpecChanged` ignores (§3).
fn spec_of(job: &Value) -> Value {
    let mut j = job.clone();
    if let Some(o) = j.as_object_mut() {
        for f in SERVER_FIELDS {
            o.remove(f);
        }
    }
    j
}

/// `validateJobUpdate` (§2.1 step 6).
fn validate_job_update(old: &Value, new: &Obj) -> Result<(), String> {
    let (ot, nt) = (
        old["Type"].as_str().unwrap_or(""),
        new["Type"].as_str().unwrap_or(""),
    );
    if ot != nt {
        return Err(format!("cannot update job from type {ot:?} to {nt:?}"));
    }
    let (op, np) = (!old["Periodic"].is_null(), !new["Periodic"].is_null());
    if op && !np {
        return Err("cannot update periodic job to being non-periodic".into());
    }
    if !op && np {
        return Err("cannot update non-periodic job to being periodic".into());
    }
    let (oa, na) = (
        !old["ParameterizedJob"].is_null(),
        !new["ParameterizedJob"].is_null(),
    );
    if oa && !na {
        return Err("cannot update parameterized job to being non-parameterized".into());
    }
    if !oa && na {
        return Err("cannot update non-parameterized job to being parameterized".into());
    }
    Ok(())
}

fn preserve(old: &Value, job: &mut Obj, counts: bool, resources: bool) {
    let Some(groups) = job.get_mut("TaskGroups").and_then(Value::as_array_mut) else {
        return;
    };
    for g in groups {
        let Some(og) = old["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["Name"] == g["Name"])
        else {
            continue;
        };
        if counts {
            g["Count"] = og["Count"].clone();
        }
        if resources && let Some(tasks) = g["Tasks"].as_array_mut() {
            for t in tasks {
                if let Some(ot) = og["Tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|o| o["Name"] == t["Name"])
                {
                    t["Resources"] = ot["Resources"].clone();
                }
            }
        }
    }
}

/// `scheduler/util.go: tasksUpdated` in outline: does the group need new allocations?
fn tasks_updated(old_job: &Value, new_job: &Value, group: &str) -> bool {
    let find = |j: &Value| {
        j["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["Name"] == group)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (a, b) = (find(old_job), find(new_job));
    for f in ["EphemeralDisk", "Networks", "Volumes", "Meta"] {
        if a[f] != b[f] {
            return true;
        }
    }
    if old_job["Meta"] != new_job["Meta"] {
        return true;
    }
    let tasks = |g: &Value| g["Tasks"].as_array().cloned().unwrap_or_default();
    let (at, bt) = (tasks(&a), tasks(&b));
    if at.len() != bt.len() {
        return true;
    }
    // Changes that Nomad applies in place.
    const IN_PLACE: [&str; 7] = [
        "KillTimeout",
        "Services",
        "Constraints",
        "Affinities",
        "RestartPolicy",
        "ShutdownDelay",
        "KillSignal",
    ];
    for t in &at {
        let Some(u) = bt.iter().find(|u| u["Name"] == t["Name"]) else {
            return true;
        };
        let (mut t, mut u) = (t.clone(), u.clone());
        for f in IN_PLACE {
            t[f] = Value::Null;
            u[f] = Value::Null;
        }
        if t != u {
            return true;
        }
    }
    false
}
