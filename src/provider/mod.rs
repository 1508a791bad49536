//! The provider contract: how tend observes, applies and destroys one resource in an outside
//! system. Each provider folder also holds its kinds' pure models (`model.rs`, see
//! [`crate::model`]); the one list of both is [`crate::registry`].
//!
//! Shaped like a reconcile function (kube-runtime, Terraform's resource lifecycle). The trait
//! holds only what talks to the outside system; everything pure about a kind (schema, defaults,
//! drift, replace-forcing fields, concurrency) is its model's. Providers never touch the state
//! store directly: they persist through the [`Journal`] the executor hands them.

pub mod nomad;
pub mod postgres;
pub mod pulumi;
pub mod score;
pub mod tenant;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;

use crate::address::Kind;
use crate::plan::Action;
use crate::state::Record;
use crate::value::Value;

pub use crate::model::{Desired, Drift, ErrorClass, Observed, ProviderError};

/// What an apply produced.
#[derive(Clone, Debug, Default)]
pub struct Applied {
    /// Outputs other resources can ref as `status.outputs.<key>`.
    pub outputs: BTreeMap<String, Value>,
    /// Provider data to keep in state (e.g. a password and its rotation number).
    pub private: BTreeMap<String, Value>,
}

/// The executor's side of an action: lets a provider persist data *before* it reaches the
/// outside system (invariant 1: a generated secret is in state before any server sees it).
#[async_trait]
pub trait Journal: Send + Sync {
    /// Persist `private` for the resource being applied (merged over what is recorded), flushed
    /// to disk before this returns.
    async fn save_private(&self, private: BTreeMap<String, Value>) -> Result<(), ProviderError>;

    /// The value saved under `key` by this action so far (by [`Provider::prepare`] or an
    /// earlier `save_private`), not what the record held before the action began.
    fn journaled(&self, key: &str) -> Option<Value>;
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

    /// A refresh (a plan's round of `observe` calls) begins: what the provider read of the
    /// outside before now must not serve it. Providers that share one read among the
    /// resources of one refresh (a PostgreSQL server's catalog) start afresh here, and read
    /// per resource again after [`Provider::end_refresh`]. Default: nothing kept.
    fn begin_refresh(&self) {}

    /// The refresh [`Provider::begin_refresh`] opened is over.
    fn end_refresh(&self) {}

    /// `tend import`: what the provider keeps in private data about an object that exists and
    /// is being recorded as found (e.g. its identity). Read-only. Default: nothing.
    async fn import(&self, desired: &Desired) -> Result<BTreeMap<String, Value>, ProviderError> {
        let _ = desired;
        Ok(BTreeMap::new())
    }

    /// Read the real object (read-only). `Ok(None)` when it does not exist.
    async fn observe(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Option<Observed>, ProviderError>;

    /// Make the object match `desired`, idempotently.
    async fn apply(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Applied, ProviderError>;

    /// Persist through `journal` what `apply(desired, recorded)` will need before it reaches
    /// the outside system: a newly generated secret (invariant 1). Local work only: it must
    /// not touch the outside system. The executor calls it ahead of the action's turn (while
    /// earlier actions still run), so the journal's flush overlaps their work; `apply` finds
    /// what was saved through [`Journal::journaled`]. Returns whether it journaled: that
    /// flushed write carries the resource's `applying` mark, which the executor then does
    /// not write again (one flush per action instead of two). Default: nothing to prepare.
    async fn prepare(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<bool, ProviderError> {
        let _ = (journal, desired, recorded);
        Ok(false)
    }

    /// Remove the object described by `recorded`; `Ok` if it is already gone. Providers decide
    /// from the recorded spec what removal means (e.g. `on_delete: retain` keeps data).
    async fn destroy(&self, recorded: &Record) -> Result<(), ProviderError>;

    /// At plan time, for a planned `action`: what it needs from the system that the
    /// credentials do not grant, one sentence per missing permission (each becomes a plan
    /// error). Read-only. `desired` is what an apply would write (create, update, replace,
    /// adopt), `recorded` what a destroy would remove (delete, replace). An `Err` means the
    /// check itself could not be made (a warning; the apply will find out). Default: nothing
    /// to check.
    async fn preflight(
        &self,
        action: Action,
        desired: Option<&Desired>,
        recorded: Option<&Record>,
    ) -> Result<Vec<String>, ProviderError> {
        let _ = (action, desired, recorded);
        Ok(Vec::new())
    }
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

/// The provider that converges `kind`, if its model names one.
pub fn for_kind(providers: &[Arc<dyn Provider>], kind: Kind) -> Option<Arc<dyn Provider>> {
    let name = kind.model().provider()?;
    providers.iter().find(|p| p.name() == name).cloned()
}

/// One status line per composition with records: tenants, then Score workloads (each from its
/// children's records, as `tend status` and `tend state show <Parent>.<name>` show them).
pub fn composition_statuses(records: &[Record]) -> Vec<tenant::status::TenantStatus> {
    let mut all = tenant::status::statuses(records);
    all.extend(tenant::status::statuses_of(score::WORKLOAD, records));
    all
}

/// Whether `kind` is a composition that has a status line (a `TenantInstance`, a
/// `ScoreWorkload`).
pub fn has_composition_status(kind: &str) -> bool {
    kind == tenant::INSTANCE || kind == score::WORKLOAD
}
