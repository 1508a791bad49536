//! The `NomadJob` kind as a pure model: schema, the nomad credential, defaults (`job.ID` from
//! the resource name, the connection from the credential), replace-forcing fields, the job ID
//! known before apply, drift from Nomad's own plan, and the per-cluster concurrency key. Pure:
//! no HTTP.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CLUSTER_CONCURRENCY, JobSpec, PRIVATE_JOB_MODIFY_INDEX, client, differences};
use crate::model::{
    BuildCx, CredentialSlot, CredentialType, Desired, Drift, Field, KindModel, LIFECYCLE, Observed,
    Output, Schema, Ty, or_insert,
};
use crate::state::Record;
use crate::value::Value;

/// The `nomad` credential: a cluster's address, ACL token and TLS material.
pub static CREDENTIAL: CredentialType = CredentialType {
    name: "nomad",
    keys: &[
        ("address", false),
        ("token", true),
        ("region", false),
        ("namespace", false),
        ("ca_cert", false),
        ("client_cert", false),
        ("client_key", true),
    ],
};

pub struct NomadJob;

static SCHEMA: Schema = Schema {
    fields: &[
        Field::new("job", Ty::Any).required(),
        Field::fixed("credential", Ty::Str),
        Field::fixed("purge_on_destroy", Ty::Bool),
        Field::fixed("timeout", Ty::Duration),
        Field::fixed("lifecycle", Ty::Obj(LIFECYCLE)),
    ],
    outputs: &[
        Output::plain("job_id"),
        Output::plain("version"),
        Output::plain("job_modify_index"),
        Output::plain("status"),
        Output::plain("allocs_running"),
        Output::plain("allocs_desired"),
    ],
    open_outputs: false,
    default_timeout: Duration::from_secs(120),
};

impl KindModel for NomadJob {
    fn name(&self) -> &'static str {
        "NomadJob"
    }

    fn schema(&self) -> &'static Schema {
        &SCHEMA
    }

    fn provider(&self) -> Option<&'static str> {
        Some("nomad")
    }

    fn credential_slots(&self) -> &'static [CredentialSlot] {
        &[CredentialSlot {
            provider: Some("nomad"),
            field: Some("credential"),
            via: "credential",
            required: false,
        }]
    }

    /// `job.ID` defaults to the resource name and `job.Name` to the ID; the connection is the
    /// nomad credential's data, its address defaulting to the local agent as Nomad's own CLI
    /// does.
    fn complete(&self, cx: &BuildCx<'_>, spec: &mut Value) -> Value {
        let mut conn = Value::map();
        if let Some(c) = cx.credential("credential") {
            for (k, v) in &c.data {
                conn.insert(k.clone(), v.clone());
            }
        }
        or_insert(&mut conn, "address", || {
            Value::Str("http://127.0.0.1:4646".into())
        });
        or_insert(spec, "purge_on_destroy", || Value::Bool(false));
        if let Value::Map(m) = spec
            && let Some(job) = m.get_mut("job")
        {
            let name = cx.manifest.address.name.as_str();
            or_insert(job, "ID", || Value::Str(name.to_owned()));
            let id = job.get("ID").cloned().unwrap_or(Value::Null);
            or_insert(job, "Name", || id);
        }
        conn
    }

    fn immutable_fields(&self) -> &'static [&'static str] {
        &["job.ID", "job.Namespace", "job.Region", "job.Type"]
    }

    fn known_outputs(&self, desired: &Desired) -> BTreeMap<String, Value> {
        let mut out = BTreeMap::new();
        if let Some(id) = JobSpec::from_value(&desired.spec).ok().and_then(|s| s.id()) {
            out.insert("job_id".to_owned(), Value::Str(id.to_owned()));
        }
        out
    }

    fn drift(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
        observed: &Observed,
    ) -> Vec<Drift> {
        let declared_stop = desired
            .spec
            .get_path(["job", "Stop"])
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let recorded_index = recorded
            .and_then(|r| r.private.get(PRIVATE_JOB_MODIFY_INDEX))
            .and_then(Value::as_i64);
        differences(observed, declared_stop, recorded_index)
    }

    /// One key per cluster address.
    fn concurrency(&self, connection: &Value) -> (String, usize) {
        let address = connection
            .get("address")
            .map(Value::to_text)
            .unwrap_or_default();
        let key = client::normalize_address(&address).unwrap_or(address);
        (key, CLUSTER_CONCURRENCY)
    }
}
