//! The `NomadJob` kind as a pure model: schema, the nomad credential, defaults (`job.ID` from
//! the resource name, the connection from the credential), replace-forcing fields, the job ID
//! known before apply, drift from Nomad's own plan, and the per-cluster concurrency key. Pure:
//! no HTTP.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::secrets::MAX_JOB_ID_BYTES;

/// Why no sensitive value may sit in a `Meta` entry.
const META_HELP: &str =
    "pass secrets where the kind delivers them as secrets (for a Nomad job, a task's `Env`)";
/// Why a sensitive `Env` value needs a plain name.
const ENV_KEY_HELP: &str = "a task's sensitive Env values reach it through an env template, \
     and Nomad's env-file parser (hashicorp/go-envparse) accepts only names of letters, digits, \
     `_` and `.`; give it such a name (e.g. DB_PASSWORD)";
use super::{CLUSTER_CONCURRENCY, JobSpec, PRIVATE_JOB_MODIFY_INDEX, client, differences};
use crate::manifest::diag::Diagnostic;
use crate::manifest::node::{Node, NodeValue};
use crate::manifest::refs::literal;
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
        Field::fixed("detach", Ty::Bool),
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
            let name = cx.manifest.address.name.as_ref();
            or_insert(job, "ID", || Value::Str(name.to_owned()));
            let id = job.get("ID").cloned().unwrap_or(Value::Null);
            or_insert(job, "Name", || id);
        }
        conn
    }

    /// A literal `job.ID` Nomad (or the job's Variable path) would refuse.
    fn check(&self, spec: &Node, file: &Arc<PathBuf>, diags: &mut Vec<Diagnostic>) {
        let Some(node) = spec.get("job").and_then(|j| j.get("ID")) else {
            return;
        };
        let Some(id) = literal(node) else { return };
        let why = if id.is_empty() {
            Some("must not be empty".to_owned())
        } else if id.chars().any(char::is_whitespace) {
            Some("contains a space (Nomad refuses it)".to_owned())
        } else if id.contains('\0') {
            Some("contains a NUL character".to_owned())
        } else if id.len() > MAX_JOB_ID_BYTES {
            Some(format!(
                "is {} bytes; at most {MAX_JOB_ID_BYTES} fit the job's Variable path `nomad/jobs/<ID>` (128 characters)",
                id.len()
            ))
        } else {
            None
        };
        if let Some(why) = why {
            diags.push(Diagnostic::new(
                file,
                node.pos,
                format!("invalid spec.job.ID: {why}"),
            ));
        }
    }

    /// `Meta` of the job, its groups and tasks is registered with the job in plain text: each
    /// entry, by its path (`job.Meta.owner`). And a task's `Env` entry whose name the env
    /// template that carries sensitive values cannot hold (see `secrets::is_env_key`).
    fn secret_free<'a>(&self, spec: &'a Node) -> Vec<(String, &'a Node, &'static str)> {
        let (mut out, mut env) = (Vec::new(), Vec::new());
        let Some(job) = spec.get("job") else {
            return out;
        };
        let mut meta = |at: String, n: &'a Node| {
            if let Some(m) = n.get("Meta") {
                match m.as_map() {
                    Some(entries) => {
                        for (k, v) in entries {
                            out.push((format!("{at}.Meta.{}", k.name), v, META_HELP));
                        }
                    }
                    None => out.push((format!("{at}.Meta"), m, META_HELP)),
                }
            }
        };
        let seq = |n: &'a Node, key: &str| match n.get(key).map(|v| &v.value) {
            Some(NodeValue::Seq(items)) => items.iter().collect(),
            _ => Vec::new(),
        };
        meta("job".to_owned(), job);
        for (gi, group) in seq(job, "TaskGroups").into_iter().enumerate() {
            meta(format!("job.TaskGroups[{gi}]"), group);
            for (ti, task) in seq(group, "Tasks").into_iter().enumerate() {
                meta(format!("job.TaskGroups[{gi}].Tasks[{ti}]"), task);
                let at = format!("job.TaskGroups[{gi}].Tasks[{ti}]");
                if let Some(entries) = task.get("Env").and_then(|e| e.as_map()) {
                    for (k, v) in entries {
                        if !super::secrets::is_env_key(&k.name) {
                            env.push((format!("{at}.Env.{}", k.name), v, ENV_KEY_HELP));
                        }
                    }
                }
            }
        }
        out.extend(env);
        out
    }

    /// A job with this ID registered by someone else is not taken over silently.
    fn checks_ownership(&self) -> bool {
        true
    }

    /// The job's ID.
    fn import_id(&self, desired: &Desired) -> Option<String> {
        match desired.spec.get("job")?.get("ID")? {
            Value::Str(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
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
