//! What state keeps per resource and per run. Plain data; serialisation with encryption lives
//! in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::{Address, Kind};
use crate::value::Value;

/// Where a resource's last action left it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// The system confirmed the last apply.
    Ready,
    /// The last action failed; `last_error` says why.
    Failed,
    /// An action started and did not report back (crash or kill): refresh before planning.
    Applying,
}

/// The last-applied state of one resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub address: Address,
    pub kind: Kind,
    /// Digest of the resolved desired spec that was last applied (secrets enter it keyed).
    pub spec_hash: String,
    /// The resolved spec last applied. Secrets are [`Value::Secret`] in memory and encrypted at
    /// rest.
    pub spec: Value,
    /// The resolved connection last used (see `provider::Desired::connection`); secrets
    /// encrypted at rest.
    pub connection: Value,
    /// Outputs; sensitive ones are [`Value::Secret`].
    pub outputs: BTreeMap<String, Value>,
    /// Provider data (e.g. the generated password and its rotation).
    pub private: BTreeMap<String, Value>,
    pub status: Status,
    /// The last error, free of secrets.
    pub last_error: Option<String>,
    /// `lifecycle.prevent_destroy` as last applied (invariant 7: protection lives in state).
    pub prevent_destroy: bool,
    pub depends_on: Vec<Address>,
    /// Unix milliseconds.
    pub created_at: u64,
    pub updated_at: u64,
    /// Bumped on every successful apply.
    pub generation: u64,
}

impl Record {
    /// A fresh record for a resource about to be created.
    pub fn new(address: Address, now: u64) -> Self {
        Record {
            kind: address.kind,
            address,
            spec_hash: String::new(),
            spec: Value::map(),
            connection: Value::map(),
            outputs: BTreeMap::new(),
            private: BTreeMap::new(),
            status: Status::Applying,
            last_error: None,
            prevent_destroy: false,
            depends_on: Vec::new(),
            created_at: now,
            updated_at: now,
            generation: 0,
        }
    }
}

/// What started a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    Cli,
    Daemon,
}

/// The outcome of one resource in a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceResult {
    pub address: String,
    /// `create`, `update`, `replace`, `delete`.
    pub action: String,
    /// `applied`, `failed`, `blocked`, `skipped`.
    pub outcome: String,
    /// Error or reason (e.g. `blocked by PostgresServer.main`); free of secrets.
    pub detail: Option<String>,
    pub elapsed_ms: u64,
}

/// One apply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Time-ordered id (zero-padded unix millis + counter), so ids sort by start.
    pub id: String,
    pub trigger: Trigger,
    /// `Plan: X to add, Y to change, Z to destroy.`
    pub summary: String,
    pub results: Vec<ResourceResult>,
    /// Tail of provider output (e.g. a child process), free of secrets.
    pub output_tail: Vec<String>,
    pub exit_code: i32,
    pub started_at: u64,
    pub ended_at: u64,
    /// The manifests revision applied, when known (git HEAD).
    pub revision: Option<String>,
}
