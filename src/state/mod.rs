//! State: the last-applied record of every resource, the run history and the store's metadata,
//! kept in sled behind the [`StateStore`] trait.
//!
//! Invariants this module upholds: every write is flushed before it returns (never rely on
//! sled's background flusher); secrets are encrypted at rest with the key file; one process
//! holds the store at a time (sled's file lock, reported as [`StateError::Locked`]).
//! It must not know about manifests, plans or providers.

mod crypto;
mod record;
mod store;

pub use record::{Record, ResourceResult, Run, RunOutcome, Status, Trigger};

pub use store::SledStore;

use crate::address::Address;

/// A record as it sits in the store, its spec and secrets not yet decoded: listing 10,000 of
/// these costs their bytes (under 1 KB each), not 10,000 decoded specs. Open one with
/// [`StateStore::unseal`] when it is needed.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub address: Address,
    pub status: Status,
    bytes: std::sync::Arc<[u8]>,
}

impl Sealed {
    fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Store metadata (DESIGN §3 `meta`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Meta {
    pub schema_version: u32,
    /// Random id of this state's history; a plan file made against another lineage is refused.
    pub lineage: String,
    /// Bumped by every write to `resources`.
    pub serial: u64,
}

/// Errors of the state layer; messages never contain secrets.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Another process (normally the daemon) holds the store.
    #[error("the state in {0} is locked by another tend process (is a daemon running?)")]
    Locked(String),
    /// The store was written by a newer tend.
    #[error("state schema version {found} is newer than this tend understands ({supported})")]
    Schema { found: u32, supported: u32 },
    /// A secret could not be decrypted: wrong or changed key file.
    #[error("cannot decrypt a secret in state: the key file does not match this state")]
    Decrypt,
    /// A record or run that does not parse.
    #[error("corrupt state entry {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("state I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("state store error: {0}")]
    Sled(String),
}

/// The state store. Synchronous: async callers go through `spawn_blocking`.
pub trait StateStore: Send + Sync {
    fn meta(&self) -> Result<Meta, StateError>;
    fn get(&self, address: &Address) -> Result<Option<Record>, StateError>;
    /// Insert or replace a record, bump the serial, flush.
    fn put(&self, record: &Record) -> Result<(), StateError>;
    /// Forget a record (no-op if absent), bump the serial, flush.
    fn remove(&self, address: &Address) -> Result<(), StateError>;
    /// All records, sorted by address.
    fn list(&self) -> Result<Vec<Record>, StateError> {
        self.list_sealed()?.iter().map(|s| self.unseal(s)).collect()
    }
    /// All records undecoded, sorted by address: for a pass over every resource that decodes
    /// one at a time (a plan, a metrics scrape).
    fn list_sealed(&self) -> Result<Vec<Sealed>, StateError>;
    /// Decode (and decrypt) a record from [`StateStore::list_sealed`]. CPU only, no I/O.
    fn unseal(&self, sealed: &Sealed) -> Result<Record, StateError>;
    /// Insert or replace a run record, flush.
    fn put_run(&self, run: &Run) -> Result<(), StateError>;
    /// Runs, newest first, at most `limit`.
    fn runs(&self, limit: usize) -> Result<Vec<Run>, StateError>;
    fn run(&self, id: &str) -> Result<Option<Run>, StateError>;
    /// Key for keyed digests of secrets ([`crate::value::Value::digest`]); derived from the
    /// state key, never the key itself.
    fn digest_key(&self) -> &[u8];
    /// The whole state as JSON. Secrets are left out (shown as `(sensitive)`) unless
    /// `include_secrets`, in which case they are included *encrypted* (importable with the same
    /// key file).
    fn export(&self, include_secrets: bool) -> Result<serde_json::Value, StateError>;
    /// Replace all records with those of an export made with secrets included.
    fn import(&self, doc: &serde_json::Value) -> Result<(), StateError>;
    /// Write the rolling backup (`backup.json` beside the store, secrets encrypted) atomically:
    /// write a temp file, fsync, rename.
    fn write_backup(&self) -> Result<(), StateError>;
}
