//! Tenant status, as operators ask for it: one line per `TenantInstance`, derived from its
//! children's records (the database and the Nomad job, with the allocation counts the job
//! reported at its last apply). A view over state; pure.

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
    let mut by_tenant: BTreeMap<&str, (Option<&Record>, Option<&Record>)> = BTreeMap::new();
    for r in records
        .iter()
        .filter(|r| r.address.parent == Some(kind(INSTANCE)))
    {
        let e = by_tenant.entry(r.address.name.as_str()).or_default();
        match r.kind.as_str() {
            DATABASE => e.0 = Some(r),
            JOB => e.1 = Some(r),
            _ => {}
        }
    }
    by_tenant
        .into_iter()
        .map(|(name, (db, job))| status(name, db, job))
        .collect()
}

fn status(name: &str, db: Option<&Record>, job: Option<&Record>) -> TenantStatus {
    let text = |r: Option<&Record>, k: &str| {
        r.and_then(|r| r.outputs.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let int = |k: &str| job.and_then(|r| r.outputs.get(k)).and_then(Value::as_i64);
    let failed = [db, job]
        .into_iter()
        .flatten()
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
    } else if ready(db) && ready(job) && desired.is_some_and(|d| d > 0) && running >= desired {
        ("running", None)
    } else {
        ("provisioning", None)
    };
    TenantStatus {
        tenant: format!("TenantInstance.{name}"),
        status: status.into(),
        reason,
        database: db
            .and_then(|r| r.spec.get("database"))
            .and_then(Value::as_str)
            .map(str::to_owned),
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
}
