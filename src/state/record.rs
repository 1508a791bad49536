//! What state keeps per resource and per run. Plain data; serialisation with encryption lives
//! in the store.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::address::{Address, Kind};
use crate::model::ErrorClass;
use crate::plan::Action;
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

impl Status {
    /// Every status, for metrics that report zeros too.
    pub const ALL: [Status; 3] = [Status::Ready, Status::Failed, Status::Applying];

    /// The name used in state, the control API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ready => "ready",
            Status::Failed => "failed",
            Status::Applying => "applying",
        }
    }
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
    /// With `failed`: the class of the last error, which decides what happens next (a
    /// `permanent` one is not retried by the daemon until the resource's inputs change).
    pub error_class: Option<ErrorClass>,
    /// With `failed`: a digest of the inputs the failed attempt had (resolved spec and
    /// connection, so a manifest, a dependency's outputs or a credential), to tell whether
    /// anything changed since.
    pub failed_inputs: Option<String>,
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
            error_class: None,
            failed_inputs: None,
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

/// How one resource ended in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunOutcome {
    /// The provider confirmed the action.
    Applied,
    /// Nothing to do once its dependencies were known (or a delete of something already gone).
    Unchanged,
    /// The action failed; the result's `detail` and `error_class` say why.
    Failed,
    /// Not attempted because something it depends on failed.
    Blocked,
}

impl RunOutcome {
    /// Every outcome, for metrics that report zeros too.
    pub const ALL: [RunOutcome; 4] = [
        RunOutcome::Applied,
        RunOutcome::Unchanged,
        RunOutcome::Failed,
        RunOutcome::Blocked,
    ];

    /// The name used in run records, the control API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Applied => "applied",
            RunOutcome::Unchanged => "unchanged",
            RunOutcome::Failed => "failed",
            RunOutcome::Blocked => "blocked",
        }
    }

    /// Applied or unchanged.
    pub fn ok(self) -> bool {
        matches!(self, RunOutcome::Applied | RunOutcome::Unchanged)
    }
}

/// The outcome of one resource in a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceResult {
    pub address: String,
    /// `create`, `update`, `replace`, `delete`.
    pub action: Action,
    /// `applied`, `unchanged`, `failed`, `blocked`.
    pub outcome: RunOutcome,
    /// Error or reason (e.g. `blocked by PostgresServer.main`); free of secrets.
    pub detail: Option<String>,
    /// With `failed`: the error's class (absent in runs recorded before classes were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_class: Option<ErrorClass>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_results_keep_their_field_names_and_values_on_disk() {
        let r = ResourceResult {
            address: "PostgresDatabase.a".into(),
            action: Action::Create,
            outcome: RunOutcome::Unchanged,
            detail: None,
            error_class: None,
            elapsed_ms: 3,
        };
        assert_eq!(
            serde_json::to_string(&r).expect("json"),
            r#"{"address":"PostgresDatabase.a","action":"create","outcome":"unchanged","detail":null,"elapsed_ms":3}"#
        );
        // A record written before classes were typed.
        let old: ResourceResult = serde_json::from_str(
            r#"{"address":"PostgresDatabase.a","action":"delete","outcome":"failed","detail":"x","elapsed_ms":1}"#,
        )
        .expect("old result");
        assert_eq!(
            (old.action, old.outcome, old.error_class),
            (Action::Delete, RunOutcome::Failed, None)
        );
        let failed = ResourceResult {
            error_class: Some(ErrorClass::Conflict),
            outcome: RunOutcome::Failed,
            ..old
        };
        let json = serde_json::to_value(&failed).expect("json");
        assert_eq!(json["error_class"], "conflict");
        for o in RunOutcome::ALL {
            assert_eq!(
                serde_json::to_value(o).expect("json"),
                serde_json::Value::from(o.as_str())
            );
        }
        for c in ErrorClass::ALL {
            assert_eq!(
                serde_json::to_value(c).expect("json"),
                serde_json::Value::from(c.as_str())
            );
        }
        for s in Status::ALL {
            assert_eq!(
                serde_json::to_value(s).expect("json"),
                serde_json::Value::from(s.as_str())
            );
        }
    }
}
