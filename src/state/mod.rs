//! State: the last-applied record of every resource, the run history and the store's metadata,
//! kept in sled behind the [`StateStore`] trait.
//!
//! Invariants this module upholds: every write is flushed before it returns (never rely on
//! sled's background flusher); secrets are encrypted at rest with the key file; one process
//! holds the store at a time (sled's file lock, reported as [`StateError::Locked`]).
//! A store is never silently replaced: a missing `db/` beside a backup, a backup of another
//! lineage or one newer than the store is refused with the restore command.
//! It must not know about manifests, plans or providers.

mod codec;
mod crypto;
mod postgres;
mod record;
mod store;

pub use record::{Record, ResourceResult, Run, RunOutcome, Status, Trigger};

pub use codec::SCHEMA_VERSION;
pub use postgres::{DEFAULT_LEASE, DEFAULT_SCHEMA, PgOpen, PgStore, PgTarget};
pub use store::{BACKUP_FILE, BACKUPS_KEPT, SledStore};

use crate::address::Address;

/// The key file a state whose local directory is `dir` uses (see `crypto`).
pub fn key_file(dir: &std::path::Path) -> std::path::PathBuf {
    crypto::KeyLocation::from_env(dir).path
}

pub use crypto::share_key_file;

/// A record as it sits in the store, its spec and secrets not yet decoded: listing 10,000 of
/// these costs their bytes (under 1 KB each), not 10,000 decoded specs; listed with
/// [`StateStore::list_heads`], only its head (the bytes are read again when it is unsealed).
/// Open one with [`StateStore::unseal`] when it is needed.
#[derive(Clone, Debug)]
pub struct Sealed {
    pub address: Address,
    pub status: Status,
    /// The digest of the spec last applied: with `status` and `generation`, enough to tell
    /// that a resource is unchanged without decoding (or decrypting) its record.
    pub spec_hash: String,
    pub generation: u64,
    /// The stored bytes; `None` for a head listed by [`StateStore::list_heads`].
    bytes: Option<std::sync::Arc<[u8]>>,
}

impl Sealed {
    /// The stored bytes of a record from [`StateStore::list_sealed`] (empty for a head alone,
    /// which no export or dump is ever given).
    fn bytes(&self) -> &[u8] {
        self.bytes.as_deref().unwrap_or_default()
    }
}

/// A whole state as stored, moved between backends by `tend state migrate`.
pub struct Dump {
    pub lineage: String,
    pub serial: u64,
    /// Sealed: secrets stay encrypted under the state key, which both stores share.
    pub records: Vec<Sealed>,
    /// Oldest first.
    pub runs: Vec<Run>,
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
    /// sled failed; the message says how to restore the newest backup.
    #[error("state store error: {0}")]
    Sled(String),
    /// The store (`<state>/db`) is missing while a backup of its history exists: starting a
    /// new history would orphan every recorded object and the backup with it.
    #[error(
        "the state store {dir}/db is missing but {backup} holds this state's backup; tend will \
         not start a new history over it. Restore it with: tend --state {dir} state import {backup}"
    )]
    Lost { dir: String, backup: String },
    /// The store cannot be opened (damaged, not a sled store, no permission).
    #[error("cannot read the state store {dir}/db: {reason}; {restore}")]
    Unreadable {
        dir: String,
        reason: String,
        /// How to restore the newest backup (see `store::restore_hint`).
        restore: String,
    },
    /// `backup.json` belongs to another lineage than the store: it is not overwritten.
    #[error(
        "{backup} belongs to state lineage {theirs} but the store in {dir} is lineage {ours}; \
         tend will not overwrite it. Restore it with `tend --state {dir} state import {backup}`, \
         or move it out of the state directory to keep this store"
    )]
    OtherLineage {
        dir: String,
        backup: String,
        theirs: String,
        ours: String,
    },
    /// `backup.json` is newer than the store (same lineage): the store lost writes.
    #[error(
        "{backup} is at serial {backup_serial} but the store in {dir} only at {serial}: the store \
         lost writes. Restore the backup with: tend --state {dir} state import {backup}"
    )]
    Behind {
        dir: String,
        backup: String,
        backup_serial: u64,
        serial: u64,
    },
    /// A backup or export whose MAC does not match its bytes.
    #[error(
        "the document fails its integrity check (its MAC does not match): it was changed after \
         tend wrote it, or written under another key file; it is not imported"
    )]
    Tampered,
    /// A PostgreSQL state could not be read or written (never names the password).
    #[error("state backend {target}: {reason}")]
    Postgres { target: String, reason: String },
    /// Another writer holds the PostgreSQL state's lock.
    #[error("the state in {target} is locked by {holder}")]
    Held { target: String, holder: String },
    /// A write refused because this process no longer holds the writers' lock.
    #[error("this tend no longer holds the lock on the state in {target}: {reason}")]
    Fenced { target: String, reason: String },
    /// The store was moved to another backend by `tend state migrate`.
    #[error(
        "the state in {store} was migrated to {to} and is no longer used; run tend with \
         --state {to}"
    )]
    Migrated { store: String, to: String },
    /// A `state import` stopped (crash, kill, full disk) after writing part of its document.
    #[error(
        "the state in {dir} holds part of an import (the document of lineage {doc}) that \
         stopped before it finished; run the same `tend --state {dir} state import FILE` again \
         to finish it (records already written are skipped), or import another backup"
    )]
    Interrupted { dir: String, doc: String },
    /// `state migrate` only fills an empty store.
    #[error(
        "the state in {store} already holds records or runs; `tend state migrate` only fills an \
         empty state"
    )]
    NotEmpty { store: String },
    /// A document to import carries no MAC.
    #[error(
        "the document carries no MAC (tend signs its backups and `state export \
         --include-secrets`); it is not imported unless --allow-unsigned is given"
    )]
    Unsigned,
}

/// The answer to [`Leadership::try_lead`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lead {
    /// This process holds the writers' lock, writing with `epoch`.
    Leading { epoch: i64 },
    /// Another process holds it: who, for status and errors.
    Follower(String),
}

/// Who may write a state that several processes share (the PostgreSQL backend): one holder of
/// a lock, which lasts as long as its lease is renewed. A store only one process can open at
/// all (sled) has none: its opener always writes.
pub trait Leadership: Send + Sync {
    /// Take the writers' lock if it is free (naming this process as `command`), or say who
    /// holds it. Holding it already is `Leading`.
    fn try_lead(&self, command: &str) -> Result<Lead, StateError>;
    /// Whether this process holds the lock and its lease is still good by its own clock (a
    /// pause longer than the lease makes this false at once on waking). Writes are fenced by
    /// the store whatever this says; this is for not *starting* work.
    fn leading(&self) -> bool;
    /// Give the lock up (its session ends); writes fail until the lock is taken again.
    fn step_down(&self);
    /// How long the lock outlives its last heartbeat.
    fn lease(&self) -> std::time::Duration;
}

/// The state store. Synchronous: async callers go through `spawn_blocking`.
pub trait StateStore: Send + Sync {
    fn meta(&self) -> Result<Meta, StateError>;
    fn get(&self, address: &Address) -> Result<Option<Record>, StateError>;
    /// Insert or replace a record, bump the serial, flush.
    fn put(&self, record: &Record) -> Result<(), StateError>;
    /// [`StateStore::put`] without waiting until the write is durable: the next flushing write
    /// (any `put`, `put_run`) or the backend's own periodic flush makes it so. Only for a
    /// write whose loss in a crash the durable record before it already covers: the
    /// executor's last write of an action, after the `applying` record (with what the provider
    /// journaled) that makes the next run observe the object and converge it again.
    fn put_lazy(&self, record: &Record) -> Result<(), StateError> {
        self.put(record)
    }
    /// [`StateStore::put`] of many records in one write and one flush (seeding a store:
    /// tests, benches). Atomic where the backend's writes are.
    fn put_all(&self, records: &[Record]) -> Result<(), StateError> {
        records.iter().try_for_each(|r| self.put(r))
    }
    /// Forget a record (no-op if absent), bump the serial, flush.
    fn remove(&self, address: &Address) -> Result<(), StateError>;
    /// All records, sorted by address.
    fn list(&self) -> Result<Vec<Record>, StateError> {
        self.list_sealed()?.iter().map(|s| self.unseal(s)).collect()
    }
    /// All records undecoded, sorted by address: for a pass over every resource that decodes
    /// one at a time (a plan, a metrics scrape).
    fn list_sealed(&self) -> Result<Vec<Sealed>, StateError>;
    /// Every record's head alone (address, status, spec digest, generation), sorted by
    /// address: for a pass that decides most resources from their heads and unseals few (a
    /// plan, `state list`), so it does not hold every record's bytes. A backend whose reads
    /// are remote may return [`StateStore::list_sealed`]'s records whole.
    fn list_heads(&self) -> Result<Vec<Sealed>, StateError> {
        self.list_sealed()
    }
    /// Decode (and decrypt) a record from [`StateStore::list_sealed`] (CPU only, no I/O) or
    /// from [`StateStore::list_heads`] (its bytes read again; a record that changed since its
    /// head was listed is refused, so a pass never mixes two versions of a record).
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
    /// The whole state as [`StateStore::export`] without secrets, streamed to `out` record by
    /// record; nothing is decrypted.
    fn export_plain(&self, out: &mut dyn std::io::Write) -> Result<(), StateError>;
    /// The whole state with secrets encrypted, signed: what a backup holds, streamed to `out`
    /// record by record, ending in a MAC under the state key over every byte before it.
    fn export_signed(&self, out: &mut dyn std::io::Write) -> Result<(), StateError>;
    /// Replace all records with those of a signed export or backup, read from `input` once
    /// and streamed: it is copied to a private spool file while its MAC is computed, and the
    /// MAC is checked before anything is parsed: a mismatch is [`StateError::Tampered`]; a
    /// document without one is [`StateError::Unsigned`] unless `allow_unsigned` (an export
    /// made without secrets is refused either way). The records are then read back from the
    /// spool one at a time, each decoded (the key must match), staged, and written in one
    /// transaction only when all are good: a refused document writes nothing. A
    /// `backup.json` of another lineage is kept as `backup-<lineage>.json` rather than
    /// overwritten.
    fn import_from(
        &self,
        input: &mut dyn std::io::Read,
        allow_unsigned: bool,
    ) -> Result<(), StateError>;
    /// [`StateStore::import_from`] of a document in memory.
    fn import(&self, mut bytes: &[u8], allow_unsigned: bool) -> Result<(), StateError> {
        self.import_from(&mut bytes, allow_unsigned)
    }
    /// The writers' lock of a state several processes share; `None` when the opener is the
    /// only possible writer.
    fn leadership(&self) -> Option<&dyn Leadership> {
        None
    }
    /// Everything as stored (records sealed), for `tend state migrate`.
    fn dump(&self) -> Result<Dump, StateError> {
        let meta = self.meta()?;
        Ok(Dump {
            lineage: meta.lineage,
            serial: meta.serial,
            records: self.list_sealed()?,
            runs: self.runs(usize::MAX)?.into_iter().rev().collect(),
        })
    }
    /// Fill this store, which must hold no record and no run ([`StateError::NotEmpty`]), with
    /// `dump`: its lineage, serial, sealed records and runs kept as they are, in one write.
    fn load(&self, dump: &Dump) -> Result<(), StateError>;
    /// Refuse all further use of this store ([`StateError::Migrated`]): its state now lives
    /// at `to` (a shown form, never a password).
    fn mark_migrated(&self, to: &str) -> Result<(), StateError>;
    /// Write the backup atomically (temp file, fsync, rename): `backup.<serial>.json`, then
    /// `backup.json` as the newest; keeps the newest [`BACKUPS_KEPT`] of this lineage.
    /// Refuses ([`StateError::OtherLineage`]) to replace a `backup.json` of another lineage.
    fn write_backup(&self) -> Result<(), StateError>;
}
