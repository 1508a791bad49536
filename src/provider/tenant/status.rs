//! Tenant status, as operators ask for it: one line per `TenantInstance`, derived from its
//! children's records (the database and the Nomad job, with the allocation counts the job
//! reported at its last apply). Score workloads (`provider::score`) have the same shape and reuse
//! it through [`statuses_of`]. A view over state; pure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{DATABASE, INSTANCE, JOB, kind};
use crate::state::{Record, Status};
use crate::value::Value;

/// One tenant's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantStatus {
    pub tenant: String,
    /// `provisioning`, `running`, `stopped` or `failed`.
    pub status: String,
    /// Why, when failed (free of secrets).
    pub reason: Option<String>,
    pub database: Option<String>,
    pub job_id: Option<String>,
    /// `running/desired` allocations at the last apply.
    pub allocations: Option<String>,
}

/// The status of every tenant that has records.
pub fn statuses(records: &[Record]) -> Vec<TenantStatus> {
    statuses_of(INSTANCE, records)
}

/// The status of every composition of kind `parent` (a `TenantInstance`, a `ScoreWorkload`)
/// whose children have records: its databases (any number, keyed or not) and its Nomad job.
pub fn statuses_of(parent: &str, records: &[Record]) -> Vec<TenantStatus> {
    type Children<'a> = (Vec<&'a Record>, Option<&'a Record>);
    let mut by_parent: BTreeMap<&str, Children<'_>> = BTreeMap::new();
    let parent_kind = kind(parent);
    for r in records
        .iter()
        .filter(|r| r.address.parent.as_ref() == Some(&parent_kind))
    {
        let e = by_parent.entry(r.address.name.as_ref()).or_default();
        match r.kind.as_str() {
            DATABASE => e.0.push(r),
            JOB => e.1 = Some(r),
            _ => {}
        }
    }
    by_parent
        .into_iter()
        .map(|(name, (dbs, job))| status(&format!("{parent}.{name}"), &dbs, job))
        .collect()
}

fn status(label: &str, dbs: &[&Record], job: Option<&Record>) -> TenantStatus {
    let text = |r: Option<&Record>, k: &str| {
        r.and_then(|r| r.outputs.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let int = |k: &str| job.and_then(|r| r.outputs.get(k)).and_then(Value::as_i64);
    let failed = dbs
        .iter()
        .copied()
        .chain(job)
        .find(|r| r.status == Status::Failed);
    let stopped = job
        .and_then(|r| r.spec.get_path(["job", "Stop"]))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let (running, desired) = (int("allocs_running"), int("allocs_desired"));
    let ready = |r: Option<&Record>| r.is_some_and(|r| r.status == Status::Ready);
    let (status, reason) = if let Some(f) = failed {
        (
            "failed",
            Some(format!(
                "{}: {}",
                f.address,
                f.last_error.clone().unwrap_or_default()
            )),
        )
    } else if ready(job) && stopped {
        ("stopped", None)
    } else if dbs.iter().all(|d| ready(Some(d)))
        && ready(job)
        && desired.is_some_and(|d| d > 0)
        && running >= desired
    {
        ("running", None)
    } else {
        ("provisioning", None)
    };
    TenantStatus {
        tenant: label.to_owned(),
        status: status.into(),
        reason,
        database: {
            let mut names: Vec<&str> = dbs
                .iter()
                .filter_map(|r| r.spec.get("database").and_then(Value::as_str))
                .collect();
            names.sort_unstable();
            Some(names.join(", ")).filter(|d| !d.is_empty())
        },
        job_id: text(job, "job_id"),
        allocations: running.zip(desired).map(|(r, d)| format!("{r}/{d}")),
    }
}

impl TenantStatus {
    /// `TenantInstance.acme  running  db railzway_org_1  job railzway-org-1 (2/2 allocations)`.
    pub fn line(&self) -> String {
        let mut s = format!("{:<32} {:<12}", self.tenant, self.status);
        if let Some(d) = &self.database {
            s.push_str(&format!(" db {d}"));
        }
        if let Some(j) = &self.job_id {
            s.push_str(&format!("  job {j}"));
        }
        if let Some(a) = &self.allocations {
            s.push_str(&format!(" ({a} allocations)"));
        }
        if let Some(r) = &self.reason {
            s.push_str(&format!("\n    {r}"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::Address;

    fn rec(child: &str, status: Status) -> Record {
        let mut r = Record::new(Address::child(kind(INSTANCE), "acme", kind(child)), 0);
        r.status = status;
        r.generation = 1;
        r
    }

    fn job(stop: bool, running: i64, desired: i64) -> Record {
        let mut r = rec(JOB, Status::Ready);
        let mut job = Value::map();
        job.insert("Stop", Value::Bool(stop));
        r.spec.insert("job", job);
        r.outputs
            .insert("job_id".into(), Value::Str("railzway-org-1".into()));
        r.outputs
            .insert("allocs_running".into(), Value::Int(running));
        r.outputs
            .insert("allocs_desired".into(), Value::Int(desired));
        r
    }

    #[test]
    fn tenant_status_follows_its_children() {
        let db = rec(DATABASE, Status::Ready);
        let s = |records: Vec<Record>| statuses(&records).remove(0).status;
        assert_eq!(s(vec![db.clone(), job(false, 2, 2)]), "running");
        assert_eq!(s(vec![db.clone(), job(false, 1, 2)]), "provisioning");
        assert_eq!(s(vec![db.clone(), job(true, 0, 0)]), "stopped");
        assert_eq!(s(vec![db.clone()]), "provisioning");
        let mut broken = db.clone();
        broken.status = Status::Failed;
        broken.last_error = Some("create role: permission denied".into());
        let st = statuses(&[broken, job(false, 2, 2)]).remove(0);
        assert_eq!(st.status, "failed");
        assert!(st.reason.unwrap_or_default().contains("permission denied"));
    }

    #[test]
    fn a_score_workload_reads_all_its_keyed_databases() {
        let w = kind("ScoreWorkload");
        let db = |key: &str, name: &str, status: Status| {
            let mut r = Record::new(Address::keyed_child(w, "shop", kind(DATABASE), key), 0);
            r.status = status;
            r.spec.insert("database", Value::Str(name.into()));
            r
        };
        let mut j = job(false, 1, 1);
        j.address = Address::child(w, "shop", kind(JOB));
        let records = vec![
            db("db", "shop_db", Status::Ready),
            db("cache", "shop_cache", Status::Ready),
            j.clone(),
            rec(DATABASE, Status::Ready),
        ];
        let st = statuses_of("ScoreWorkload", &records);
        assert_eq!(st.len(), 1, "{st:?}");
        assert_eq!(st[0].tenant, "ScoreWorkload.shop");
        assert_eq!(st[0].status, "running");
        assert_eq!(st[0].database.as_deref(), Some("shop_cache, shop_db"));
        let pending = vec![db("db", "shop_db", Status::Applying), j];
        assert_eq!(
            statuses_of("ScoreWorkload", &pending)[0].status,
            "provisioning"
        );
    }
}
