//! The provider contract: how tend observes, diffs, applies and destroys one resource, and the
//! explicit list of providers (see [`registry`]).
//!
//! Shaped like a reconcile function (kube-runtime, Terraform's resource lifecycle). The trait's
//! pure parts (`immutable_fields`, `known_outputs`, `drift`) take values and return values; the
//! async parts talk to the outside system. Providers never touch the state store directly: they
//! persist through the [`Journal`] the executor hands them.

pub mod nomad;
pub mod postgres;
pub mod pulumi;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::address::{Address, Kind};
use crate::state::Record;
use crate::value::Value;

/// A resource as the manifests want it, with every ref resolved.
#[derive(Clone, Debug)]
pub struct Desired {
    pub address: Address,
    /// The resolved spec: a [`Value::Map`]. May hold [`Value::Unknown`] during planning, never
    /// when handed to `apply`.
    pub spec: Value,
    /// How to reach the outside system (e.g. a PostgreSQL server's admin connection, resolved
    /// from a PostgresServer and a Credential). Not part of the spec's digest: rotating an admin
    /// password is not a change to every database. Recorded so a destroy can still connect
    /// after the manifests that described the connection are gone.
    pub connection: Value,
    /// Per-resource timeout for one action.
    pub timeout: Duration,
    pub prevent_destroy: bool,
    /// Addresses this resource reads from (graph edges), recorded so deletes run in reverse.
    pub depends_on: Vec<Address>,
}

/// What a provider read from the real system, normalised so that server-side defaults never
/// show up as differences. Keys are field names in the provider's own vocabulary.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observed {
    pub fields: BTreeMap<String, Value>,
    /// Lines the system itself says about the change (e.g. Nomad's plan diff), shown under the
    /// resource when the plan changes it. Free of secrets.
    pub details: Vec<String>,
    /// Things the operator should know even if nothing changes (e.g. placement failures).
    pub warnings: Vec<String>,
}

/// One difference between what should be and what is.
#[derive(Clone, Debug, PartialEq)]
pub struct Drift {
    /// The field, e.g. `owner`, `role.attributes`, `password`.
    pub field: String,
    /// What it should be (rendered; `(sensitive)` for secrets).
    pub expected: String,
    /// What was found.
    pub found: String,
}

/// What an apply produced.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Outputs other resources can ref as `status.outputs.<key>`.
    pub outputs: BTreeMap<String, Value>,
    /// Provider data to keep in state (e.g. a password and its rotation number).
    pub private: BTreeMap<String, Value>,
}

/// How the executor and the daemon should treat a failure (kube's `error_policy`): the
/// executor observes again and retries a Conflict once; the daemon backs off and retries a
/// Transient one (and a Conflict that persisted), and leaves a Permanent one `failed` until its
/// inputs change or an operator asks (`tend apply`, SIGHUP). Recorded on the failed resource.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// Back off and retry (network, server restarting, lock held).
    Transient,
    /// Someone else changed the object: observe again and re-plan.
    Conflict,
    /// Retrying will not help until the manifest or the system changes.
    Permanent,
}

impl ErrorClass {
    /// Every class, for metrics that report zeros too.
    pub const ALL: [ErrorClass; 3] = [
        ErrorClass::Transient,
        ErrorClass::Conflict,
        ErrorClass::Permanent,
    ];

    /// The name used in state, the control API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Conflict => "conflict",
            ErrorClass::Permanent => "permanent",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider failure. The message must never contain a secret.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{message}")]
pub struct ProviderError {
    pub class: ErrorClass,
    pub message: String,
}

impl ProviderError {
    pub fn transient(m: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Transient,
            message: m.into(),
        }
    }
    pub fn permanent(m: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Permanent,
            message: m.into(),
        }
    }
    pub fn conflict(m: impl Into<String>) -> Self {
        ProviderError {
            class: ErrorClass::Conflict,
            message: m.into(),
        }
    }
}

/// The executor's side of an action: lets a provider persist data *before* it reaches the
/// outside system (invariant 1: a generated secret is in state before any server sees it).
#[async_trait]
pub trait Journal: Send + Sync {
    /// Persist `private` for the resource being applied (merged over what is recorded), flushed
    /// to disk before this returns.
    async fn save_private(&self, private: BTreeMap<String, Value>) -> Result<(), ProviderError>;
}

/// A provider converges the resources of some kinds.
///
/// Guarantees the executor gives: one action at a time per address; `apply` gets a spec with no
/// unknown values; `destroy` gets the last recorded state; a timeout drops the future (so every
/// action must be safe to interrupt and to repeat).
///
/// Assumptions on the provider: `apply` and `destroy` are idempotent and tolerate an object
/// that already exists / is already gone; external names are derived from the spec only
/// (invariant 9), so a retry after a crash finds the object instead of making a second one;
/// errors carry no secrets.
#[async_trait]
pub trait Provider: Send + Sync {
    /// A short name for logs and concurrency limits, e.g. `postgres`.
    fn name(&self) -> &'static str;

    /// The kinds this provider converges.
    fn kinds(&self) -> &'static [Kind];

    /// Spec fields whose change forces `-/+` replace.
    fn immutable_fields(&self, kind: Kind) -> &'static [&'static str];

    /// Outputs the provider can tell from the spec alone, before any apply (pure).
    fn known_outputs(&self, desired: &Desired) -> BTreeMap<String, Value> {
        let _ = desired;
        BTreeMap::new()
    }

    /// A key and a limit for concurrent actions against one outside system (e.g. one
    /// PostgreSQL server), so one slow system never starves the others.
    fn concurrency(&self, desired: &Desired) -> (String, usize) {
        let _ = desired;
        (self.name().to_owned(), 4)
    }

    /// Read the real object (read-only). `Ok(None)` when it does not exist.
    async fn observe(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Option<Observed>, ProviderError>;

    /// Differences between desired and observed that an apply would repair (pure).
    fn drift(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
        observed: &Observed,
    ) -> Vec<Drift>;

    /// Make the object match `desired`, idempotently.
    async fn apply(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Applied, ProviderError>;

    /// Remove the object described by `recorded`; `Ok` if it is already gone. Providers decide
    /// from the recorded spec what removal means (e.g. `on_delete: retain` keeps data).
    async fn destroy(&self, recorded: &Record) -> Result<(), ProviderError>;
}

/// Where a provider's output lines go while an action runs: the run record's output tail and
/// the terminal of `tend apply`. Lines must already be free of secrets.
pub type OutputSink = Arc<dyn Fn(&str) + Send + Sync>;

tokio::task_local! {
    /// Set by the executor around each action.
    static OUTPUT: OutputSink;
}

/// The current action's output sink, if an executor set one (call it in the action's own task,
/// and hand the result to any task it spawns).
pub fn output_sink() -> Option<OutputSink> {
    OUTPUT.try_with(Arc::clone).ok()
}

/// Run `fut` with `sink` as its output sink.
pub async fn with_output<F: std::future::Future>(sink: OutputSink, fut: F) -> F::Output {
    OUTPUT.scope(sink, fut).await
}

/// What providers may need from the process: where tend keeps its state (e.g. the Pulumi
/// provider's default `file://` backend and its working copies of bundled programs).
#[derive(Clone, Debug)]
pub struct Context {
    pub state_dir: std::path::PathBuf,
}

/// The providers tend ships, in one explicit list.
pub fn registry(ctx: &Context) -> Vec<Arc<dyn Provider>> {
    vec![
        Arc::new(postgres::PostgresProvider::default()),
        Arc::new(nomad::NomadProvider::default()),
        Arc::new(pulumi::PulumiProvider::new(ctx)),
    ]
}

/// The provider for a kind, if the kind is managed.
pub fn for_kind(providers: &[Arc<dyn Provider>], kind: Kind) -> Option<Arc<dyn Provider>> {
    providers
        .iter()
        .find(|p| p.kinds().contains(&kind))
        .cloned()
}
