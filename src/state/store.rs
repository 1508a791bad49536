//! [`SledStore`]: the [`StateStore`] on sled, with secrets encrypted at rest, every write
//! flushed before it returns, and a JSON export/import that doubles as the rolling backup.
//!
//! Layout under the state directory (created 0700): `db/` (sled, trees `resources`, `heads`,
//! `runs`, `meta`), `tend.key` (see `crypto`) and `backup.json`. `heads` holds each record's
//! head alone (address, status, spec digest, generation), written in the same transaction as
//! the record: a plan lists heads without paging every record into sled's cache (which does
//! not evict during one scan). A resource is stored as JSON in which
//! every secret is `{"$enc": "<hex nonce||ciphertext>"}`, so the store's bytes never hold a
//! plaintext secret; map keys that begin with `$` are escaped by doubling the `$`, so no user
//! map is ever read back as a secret.
//!
//! This module must not know about manifests, plans or providers, and must never store a value
//! that is not known yet or print a secret.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde_json::Value as J;
use sled::Transactional;
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};

use super::codec::{
    self, Codec, SCHEMA_VERSION, StoredRecord, head_bytes, parse_run, parse_stored, record_head,
    seal, seal_head,
};
use super::crypto::{KeyLocation, StateKey};
use super::{Dump, Meta, Record, Run, Sealed, StateError, StateStore};
use crate::address::Address;

/// File name of the newest backup in the state directory.
pub const BACKUP_FILE: &str = "backup.json";
/// How many `backup.<serial>.json` of one lineage are kept.
pub const BACKUPS_KEPT: usize = 5;
/// How much of a backup's head is read for its lineage and serial.
const HEAD_BYTES: u64 = 4096;

const META_SCHEMA: &[u8] = b"schema_version";
const META_LINEAGE: &[u8] = b"lineage";
const META_SERIAL: &[u8] = b"serial";
/// The serial at which the `heads` tree was last written with the records: a store whose
/// serial differs (written by a tend that kept no heads) has its heads rebuilt on open.
const META_HEADS_AT: &[u8] = b"heads_at_serial";
/// Set by `state migrate` on the store it moved away from: the store is refused from then on.
const META_MIGRATED: &[u8] = b"migrated_to";
/// Set while `state import` writes its chunks (to `<lineage> <serial>` of the document) and
/// cleared by its last transaction: a store that still has it holds part of an import.
const META_IMPORTING: &[u8] = b"importing";
/// An import's chunk is written once it holds this many records or bytes.
const IMPORT_CHUNK_RECORDS: usize = 1024;
const IMPORT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

/// One chunk of an import: the records and heads to write (or remove) in one transaction.
#[derive(Default)]
struct ImportChunk {
    records: sled::Batch,
    heads: sled::Batch,
    len: usize,
    bytes: usize,
}

impl ImportChunk {
    fn is_full(&self) -> bool {
        self.len >= IMPORT_CHUNK_RECORDS || self.bytes >= IMPORT_CHUNK_BYTES
    }
}

/// The sled-backed state store. Holds sled's exclusive file lock while open.
pub struct SledStore {
    dir: PathBuf,
    db: sled::Db,
    resources: sled::Tree,
    heads: sled::Tree,
    runs: sled::Tree,
    meta: sled::Tree,
    codec: Codec,
    durability: GroupCommit,
}

/// Group commit: writers that finish while a flush is running share the next one, so parallel
/// actions do not queue one fsync each. A writer takes a ticket after its write; a flush that
/// starts after the ticket was taken covers the write.
#[derive(Default)]
struct GroupCommit {
    flushing: Mutex<()>,
    /// Tickets handed out: writes that finished and want to be durable.
    written: AtomicU64,
    /// Every ticket up to this one is durable.
    durable: AtomicU64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").field("dir", &self.dir).finish()
    }
}

impl SledStore {
    /// Open (creating if needed) the state in `state_dir`.
    ///
    /// Errors: [`StateError::Locked`] if another handle has it open (after a short grace, see
    /// [`LOCK_GRACE`]); [`StateError::Schema`] if a newer tend wrote it; an I/O error if the
    /// key file is unusable, or missing while the store already holds records (a new key would
    /// make them unreadable).
    /// Refused before anything is written: a missing or empty `db/` while a backup exists
    /// ([`StateError::Lost`]), a store that cannot be read ([`StateError::Unreadable`]), and,
    /// once open, a `backup.json` of another lineage ([`StateError::OtherLineage`]) or newer
    /// than the store ([`StateError::Behind`]). Each error names the restore command.
    pub fn open(state_dir: &Path) -> Result<SledStore, StateError> {
        if let Some(backup) = newest_backup(state_dir).filter(|_| store_missing(state_dir)) {
            return Err(StateError::Lost {
                dir: state_dir.display().to_string(),
                backup: backup.display().to_string(),
            });
        }
        let store = SledStore::open_to_restore(state_dir)?;
        if let Some(doc) = store
            .meta
            .get(META_IMPORTING)
            .map_err(|e| sled_error(e, state_dir))?
        {
            return Err(StateError::Interrupted {
                dir: state_dir.display().to_string(),
                doc: String::from_utf8_lossy(&doc).replacen(' ', " at serial ", 1),
            });
        }
        store.check_backup()?;
        Ok(store)
    }

    /// [`SledStore::open`] for `tend state import`: a missing store is created (to be filled
    /// from a backup) and the backups are not compared with it.
    pub fn open_to_restore(state_dir: &Path) -> Result<SledStore, StateError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)?;
        let db = open_db(state_dir)?;
        let tree = |name: &str| db.open_tree(name).map_err(|e| sled_error(e, state_dir));
        let (resources, heads, runs, meta) = (
            tree("resources")?,
            tree("heads")?,
            tree("runs")?,
            tree("meta")?,
        );
        init_meta(&db, &meta, state_dir)?;
        if let Some(to) = meta
            .get(META_MIGRATED)
            .map_err(|e| sled_error(e, state_dir))?
        {
            return Err(StateError::Migrated {
                store: state_dir.display().to_string(),
                to: String::from_utf8_lossy(&to).into_owned(),
            });
        }

        // Refuse to mint a new key for a store that already holds records: they would all
        // become unreadable.
        let location = KeyLocation::from_env(state_dir);
        if location.create_if_missing() && !location.path.exists() && !resources.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "the state key file {} is missing but the state in {} holds records \
                     encrypted with it; restore the key file (tend will not make a new one)",
                    location.path.display(),
                    state_dir.display()
                ),
            )
            .into());
        }
        let key = StateKey::load_or_create(state_dir)?;

        let store = SledStore {
            dir: state_dir.to_owned(),
            db,
            resources,
            heads,
            runs,
            meta,
            codec: Codec { key },
            durability: GroupCommit::default(),
        };
        store.ensure_heads()?;
        Ok(store)
    }

    /// Rebuild the `heads` tree from the records unless it was written at the store's serial.
    /// Idempotent: a crash half-way leaves the serial mark unset and the next open rebuilds.
    fn ensure_heads(&self) -> Result<(), StateError> {
        let serial = self
            .meta
            .get(META_SERIAL)
            .map_err(|e| sled_error(e, &self.dir))?;
        let at = self
            .meta
            .get(META_HEADS_AT)
            .map_err(|e| sled_error(e, &self.dir))?;
        if serial.is_some() && serial == at {
            return Ok(());
        }
        self.heads.clear().map_err(|e| sled_error(e, &self.dir))?;
        let mut batch = sled::Batch::default();
        let mut staged = 0;
        for item in self.resources.iter() {
            let (k, v) = item.map_err(|e| sled_error(e, &self.dir))?;
            batch.insert(&k, head_bytes(&k, &v)?);
            staged += 1;
            if staged == HEADS_REBUILD_BATCH {
                self.heads
                    .apply_batch(std::mem::take(&mut batch))
                    .map_err(|e| sled_error(e, &self.dir))?;
                staged = 0;
            }
        }
        self.heads
            .apply_batch(batch)
            .map_err(|e| sled_error(e, &self.dir))?;
        // Only once every head is in: the mark, at the serial the records are at.
        self.meta
            .transaction(|m| {
                let serial = tx_serial(m)?;
                m.insert(META_HEADS_AT, serial.to_string().as_bytes())?;
                Ok(())
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush()?;
        tracing::debug!(store = %self.dir.display(), "rebuilt the heads of the state's records");
        Ok(())
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `backup.json` must be of this store's lineage and not newer than it.
    fn check_backup(&self) -> Result<(), StateError> {
        let path = self.dir.join(BACKUP_FILE);
        let Some(head) = read_head(&path)? else {
            return Ok(());
        };
        let meta = self.meta()?;
        let (dir, backup) = (self.dir.display().to_string(), path.display().to_string());
        if head.lineage.as_deref() != Some(meta.lineage.as_str()) {
            return Err(StateError::OtherLineage {
                dir,
                backup,
                theirs: head.lineage.unwrap_or_else(|| "(unknown)".to_owned()),
                ours: meta.lineage,
            });
        }
        match head.serial {
            Some(backup_serial) if backup_serial > meta.serial => Err(StateError::Behind {
                dir,
                backup,
                backup_serial,
                serial: meta.serial,
            }),
            _ => Ok(()),
        }
    }

    /// Keep the newest [`BACKUPS_KEPT`] `backup.<serial>.json` of `lineage`; others' are kept.
    fn prune_backups(&self, lineage: &str) -> Result<(), StateError> {
        let mine: Vec<PathBuf> = serial_backups(&self.dir)
            .into_iter()
            .map(|(_, p)| p)
            .filter(|p| {
                read_head(p)
                    .ok()
                    .flatten()
                    .is_some_and(|h| h.lineage.as_deref() == Some(lineage))
            })
            .collect();
        for old in mine.iter().rev().skip(BACKUPS_KEPT) {
            fs::remove_file(old)?;
        }
        Ok(())
    }

    /// Make every write that finished before this call durable (see [`GroupCommit`]).
    fn flush(&self) -> Result<(), StateError> {
        let group = &self.durability;
        let ticket = group.written.fetch_add(1, Ordering::SeqCst) + 1;
        let _flushing = group
            .flushing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if group.durable.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let covers = group.written.load(Ordering::SeqCst);
        self.db.flush().map_err(|e| sled_error(e, &self.dir))?;
        group.durable.store(covers, Ordering::SeqCst);
        Ok(())
    }

    /// Write one chunk of `state import` (see [`StateStore::import_from`]) and the importing
    /// mark, in one transaction.
    fn write_import_chunk(&self, chunk: ImportChunk, mark: &str) -> Result<(), StateError> {
        (&self.resources, &self.heads, &self.meta)
            .transaction(|(res, heads, meta)| {
                res.apply_batch(&chunk.records)?;
                heads.apply_batch(&chunk.heads)?;
                meta.insert(META_IMPORTING, mark.as_bytes())?;
                Ok(())
            })
            .map_err(|e| self.tx_error(e))
    }

    fn tx_error(&self, e: TransactionError<StateError>) -> StateError {
        tx_error(e, &self.dir)
    }

    /// Write one record and its head (serial bumped) in one transaction, not yet flushed.
    fn put_record(&self, record: &Record) -> Result<(), StateError> {
        let key = record.address.to_string();
        let bytes = self.codec.encode_record(record)?;
        let head = record_head(record)?;
        self.transact_resources(|res, heads| {
            res.insert(key.as_bytes(), bytes.as_slice())?;
            heads.insert(key.as_bytes(), head.as_slice())?;
            Ok(true)
        })
    }

    /// Run `f` on the resources and heads trees and bump the serial in one transaction, then
    /// flush. `f` returns whether it changed anything; the serial is bumped only if it did.
    fn write_resources<F>(&self, f: F) -> Result<(), StateError>
    where
        F: Fn(&TransactionalTree, &TransactionalTree) -> Result<bool, UnabortableTransactionError>,
    {
        self.transact_resources(f)?;
        self.flush()
    }

    /// [`SledStore::write_resources`] without the flush.
    fn transact_resources<F>(&self, f: F) -> Result<(), StateError>
    where
        F: Fn(&TransactionalTree, &TransactionalTree) -> Result<bool, UnabortableTransactionError>,
    {
        (&self.resources, &self.heads, &self.meta)
            .transaction(|(res, heads, meta)| {
                if f(res, heads)? {
                    let serial = (tx_serial(meta)? + 1).to_string();
                    meta.insert(META_SERIAL, serial.as_bytes())?;
                    meta.insert(META_HEADS_AT, serial.as_bytes())?;
                }
                Ok(())
            })
            .map_err(|e| self.tx_error(e))
    }

    /// Every stored record, undecrypted, sorted by address.
    fn stored_records(&self) -> Result<Vec<StoredRecord>, StateError> {
        let mut out = Vec::new();
        for item in self.resources.iter() {
            let (k, v) = item.map_err(|e| sled_error(e, &self.dir))?;
            out.push(parse_stored(&k, &v)?);
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }
}

impl StateStore for SledStore {
    fn meta(&self) -> Result<Meta, StateError> {
        read_meta(&self.meta, &self.dir)
    }

    fn get(&self, address: &Address) -> Result<Option<Record>, StateError> {
        let key = address.to_string();
        match self
            .resources
            .get(key.as_bytes())
            .map_err(|e| sled_error(e, &self.dir))?
        {
            None => Ok(None),
            Some(v) => self
                .codec
                .decode_record(parse_stored(key.as_bytes(), &v)?)
                .map(Some),
        }
    }

    fn put(&self, record: &Record) -> Result<(), StateError> {
        self.put_record(record)?;
        self.flush()
    }

    /// sled flushes on its own every 500 ms (its default `flush_every_ms`), and every later
    /// flush covers this write too.
    fn put_lazy(&self, record: &Record) -> Result<(), StateError> {
        self.put_record(record)
    }

    fn put_all(&self, records: &[Record]) -> Result<(), StateError> {
        let (mut batch, mut head_batch) = (sled::Batch::default(), sled::Batch::default());
        for r in records {
            let key = r.address.to_string();
            let bytes = self.codec.encode_record(r)?;
            head_batch.insert(key.as_bytes(), record_head(r)?);
            batch.insert(key.as_bytes(), bytes);
        }
        self.write_resources(|res, heads| {
            res.apply_batch(&batch)?;
            heads.apply_batch(&head_batch)?;
            Ok(true)
        })
    }

    fn remove(&self, address: &Address) -> Result<(), StateError> {
        let key = address.to_string();
        self.write_resources(|res, heads| {
            heads.remove(key.as_bytes())?;
            Ok(res.remove(key.as_bytes())?.is_some())
        })
    }

    fn list_sealed(&self) -> Result<Vec<Sealed>, StateError> {
        // Only the head is parsed here; the rest stays bytes until unsealed.
        let mut out = Vec::new();
        for item in self.resources.iter() {
            let (k, v) = item.map_err(|e| sled_error(e, &self.dir))?;
            out.push(seal(&k, &v)?);
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    fn list_heads(&self) -> Result<Vec<Sealed>, StateError> {
        let mut out = Vec::new();
        for item in self.heads.iter() {
            let (k, v) = item.map_err(|e| sled_error(e, &self.dir))?;
            out.push(seal_head(&k, &v)?);
        }
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    fn unseal(&self, sealed: &Sealed) -> Result<Record, StateError> {
        self.codec.unseal(sealed, |key| {
            self.resources
                .get(key.as_bytes())
                .map_err(|e| sled_error(e, &self.dir))
        })
    }

    fn put_run(&self, run: &Run) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(run).map_err(|e| StateError::Corrupt {
            key: format!("run {}", run.id),
            reason: e.to_string(),
        })?;
        self.runs
            .insert(run.id.as_bytes(), bytes)
            .map_err(|e| sled_error(e, &self.dir))?;
        self.flush()
    }

    fn runs(&self, limit: usize) -> Result<Vec<Run>, StateError> {
        self.runs
            .iter()
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(|e| sled_error(e, &self.dir))?;
                parse_run(&k, &v)
            })
            .collect()
    }

    fn run(&self, id: &str) -> Result<Option<Run>, StateError> {
        self.runs
            .get(id.as_bytes())
            .map_err(|e| sled_error(e, &self.dir))?
            .map(|v| parse_run(id.as_bytes(), &v))
            .transpose()
    }

    fn digest_key(&self) -> &[u8] {
        self.codec.key.digest_key()
    }

    fn export(&self, include_secrets: bool) -> Result<J, StateError> {
        self.codec
            .export(&self.meta()?, self.stored_records()?, include_secrets)
    }

    fn import_from(
        &self,
        input: &mut dyn std::io::Read,
        allow_unsigned: bool,
    ) -> Result<(), StateError> {
        let mut doc = self.codec.spool(input, allow_unsigned)?;
        let (lineage, doc_serial) = self.codec.import_head(&mut doc)?;
        // First every record is checked and nothing written: a bad document writes nothing.
        let keep = self.codec.verify_records(&mut doc)?;
        // Then the same document is written in chunks, each one transaction with its heads,
        // so memory stays flat however long the document is. Each chunk also sets the
        // importing mark, which only the last transaction (new serial, lineage) clears: a
        // crash in between leaves it, and `open` refuses the store until the import is run
        // again (it converges, see `Interrupted`). An unchanged record is not written at
        // all: re-importing the same data leaves the store as it was (sled appends every
        // write to its log).
        let mark = format!("{lineage} {doc_serial}");
        let mut chunk = ImportChunk::default();
        codec::import_records(&mut doc, &mut |k, v| {
            let same = self
                .resources
                .get(k.as_bytes())
                .map_err(|e| sled_error(e, &self.dir))?
                .is_some_and(|old| old.as_ref() == v.as_slice());
            if !same {
                chunk
                    .heads
                    .insert(k.as_bytes(), head_bytes(k.as_bytes(), &v)?);
                chunk.bytes += v.len();
                chunk.records.insert(k.as_bytes(), v);
                chunk.len += 1;
                if chunk.is_full() {
                    self.write_import_chunk(std::mem::take(&mut chunk), &mark)?;
                }
            }
            Ok(())
        })?;
        drop(doc);
        for item in self.resources.iter().keys() {
            let k = item.map_err(|e| sled_error(e, &self.dir))?;
            if !keep.contains(String::from_utf8_lossy(&k).as_ref()) {
                chunk.heads.remove(k.clone());
                chunk.records.remove(k);
                chunk.len += 1;
                if chunk.is_full() {
                    self.write_import_chunk(std::mem::take(&mut chunk), &mark)?;
                }
            }
        }
        drop(keep);
        if chunk.len > 0 {
            self.write_import_chunk(chunk, &mark)?;
        }
        self.meta
            .transaction(|meta| {
                let serial = (tx_serial(meta)?.max(doc_serial) + 1).to_string();
                meta.insert(META_LINEAGE, lineage.as_bytes())?;
                meta.insert(META_SERIAL, serial.as_bytes())?;
                meta.insert(META_HEADS_AT, serial.as_bytes())?;
                meta.remove(META_IMPORTING)?;
                Ok(())
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush()?;
        // The operator chose another history: the old one's newest backup is kept, renamed.
        let newest = self.dir.join(BACKUP_FILE);
        if let Some(old) = read_head(&newest)?
            .and_then(|h| h.lineage)
            .filter(|old| *old != lineage)
        {
            fs::rename(&newest, self.dir.join(format!("backup-{old}.json")))?;
        }
        Ok(())
    }

    /// Streamed from the tree one record at a time, in key order (the address as text), so
    /// the records are never all in memory, here nor after every apply's backup.
    fn export_signed(&self, out: &mut dyn Write) -> Result<(), StateError> {
        let records = self
            .resources
            .iter()
            .values()
            .map(|v| v.map_err(|e| sled_error(e, &self.dir)));
        self.codec.write_signed(&self.meta()?, records, out)
    }

    /// Streamed like [`SledStore::export_signed`].
    fn export_plain(&self, out: &mut dyn Write) -> Result<(), StateError> {
        let records = self
            .resources
            .iter()
            .map(|kv| kv.map_err(|e| sled_error(e, &self.dir)));
        codec::write_plain(&self.meta()?, records, out)
    }

    fn load(&self, dump: &Dump) -> Result<(), StateError> {
        if !self.resources.is_empty() || !self.runs.is_empty() {
            return Err(StateError::NotEmpty {
                store: self.dir.display().to_string(),
            });
        }
        let mut runs = sled::Batch::default();
        for run in &dump.runs {
            let bytes = serde_json::to_vec(run).map_err(|e| StateError::Corrupt {
                key: format!("run {}", run.id),
                reason: e.to_string(),
            })?;
            runs.insert(run.id.as_bytes(), bytes);
        }
        let mut head_batch = sled::Batch::default();
        for r in &dump.records {
            let key = r.address.to_string();
            head_batch.insert(key.as_bytes(), head_bytes(key.as_bytes(), r.bytes())?);
        }
        (&self.resources, &self.heads, &self.runs, &self.meta)
            .transaction(|(res, heads, run_tree, meta)| {
                for r in &dump.records {
                    res.insert(r.address.to_string().as_bytes(), r.bytes())?;
                }
                heads.apply_batch(&head_batch)?;
                run_tree.apply_batch(&runs)?;
                let serial = dump.serial.to_string();
                meta.insert(META_LINEAGE, dump.lineage.as_bytes())?;
                meta.insert(META_SERIAL, serial.as_bytes())?;
                meta.insert(META_HEADS_AT, serial.as_bytes())?;
                Ok(())
            })
            .map_err(|e| self.tx_error(e))?;
        self.flush()
    }

    fn mark_migrated(&self, to: &str) -> Result<(), StateError> {
        self.meta
            .insert(META_MIGRATED, to.as_bytes())
            .map_err(|e| sled_error(e, &self.dir))?;
        self.flush()
    }

    fn write_backup(&self) -> Result<(), StateError> {
        let meta = self.meta()?;
        let newest = self.dir.join(BACKUP_FILE);
        if let Some(theirs) = read_head(&newest)?
            .and_then(|h| h.lineage)
            .filter(|theirs| *theirs != meta.lineage)
        {
            return Err(StateError::OtherLineage {
                dir: self.dir.display().to_string(),
                backup: newest.display().to_string(),
                theirs,
                ours: meta.lineage,
            });
        }
        let numbered = self.dir.join(format!("backup.{}.json", meta.serial));
        let mut failed = None;
        write_atomically(&numbered, |file| {
            self.export_signed(file).map_err(|e| {
                let io = io::Error::other(e.to_string());
                failed = Some(e);
                io
            })
        })
        .map_err(|e| failed.take().unwrap_or(StateError::Io(e)))?;
        // `backup.json` is the same file under the name older tends and operators know.
        link_atomically(&numbered, &newest)?;
        self.prune_backups(&meta.lineage)
    }
}

/// Write the metadata of a new store, or check that of an existing one: a store written by a
/// newer tend is refused before anything (even a key file) is written.
fn init_meta(db: &sled::Db, meta: &sled::Tree, dir: &Path) -> Result<(), StateError> {
    let mut lineage = [0u8; 16];
    rand::rng().fill_bytes(&mut lineage);
    let lineage = hex::encode(lineage);
    let created = meta
        .transaction(|m| {
            if m.get(META_SCHEMA)?.is_some() {
                return Ok(false);
            }
            m.insert(META_SCHEMA, SCHEMA_VERSION.to_string().as_bytes())?;
            m.insert(META_LINEAGE, lineage.as_bytes())?;
            m.insert(META_SERIAL, &b"0"[..])?;
            Ok(true)
        })
        .map_err(|e| tx_error(e, dir))?;
    if created {
        db.flush().map_err(|e| sled_error(e, dir))?;
    }
    let found = read_meta(meta, dir)?.schema_version;
    if found > SCHEMA_VERSION {
        return Err(StateError::Schema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn read_meta(meta: &sled::Tree, dir: &Path) -> Result<Meta, StateError> {
    let get = |k: &[u8]| -> Result<String, StateError> {
        let v = meta
            .get(k)
            .map_err(|e| sled_error(e, dir))?
            .ok_or_else(|| meta_corrupt(k, "missing"))?;
        String::from_utf8(v.to_vec()).map_err(|_| meta_corrupt(k, "not UTF-8"))
    };
    Ok(Meta {
        schema_version: get(META_SCHEMA)?
            .parse()
            .map_err(|_| meta_corrupt(META_SCHEMA, "not a number"))?,
        lineage: get(META_LINEAGE)?,
        serial: get(META_SERIAL)?
            .parse()
            .map_err(|_| meta_corrupt(META_SERIAL, "not a number"))?,
    })
}

fn tx_error(e: TransactionError<StateError>, dir: &Path) -> StateError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => sled_error(e, dir),
    }
}

/// The serial inside a transaction; a malformed serial aborts it.
fn tx_serial(meta: &TransactionalTree) -> Result<u64, ConflictableTransactionError<StateError>> {
    let raw = meta
        .get(META_SERIAL)?
        .ok_or_else(|| ConflictableTransactionError::Abort(meta_corrupt(META_SERIAL, "missing")))?;
    std::str::from_utf8(&raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            ConflictableTransactionError::Abort(meta_corrupt(META_SERIAL, "not a number"))
        })
}

fn meta_corrupt(key: &[u8], reason: &str) -> StateError {
    StateError::Corrupt {
        key: format!("meta {}", String::from_utf8_lossy(key)),
        reason: reason.to_owned(),
    }
}

/// How long [`open_db`] keeps trying a locked store before reporting [`StateError::Locked`].
/// sled 0.34 releases its file lock from background threads a moment after the last handle
/// drops (spacejam/sled#1234), so closing and reopening, in one process or right after another
/// exits, would otherwise fail at random. A live holder (a daemon) still fails, a second later.
const LOCK_GRACE: Duration = Duration::from_secs(1);

/// Heads written per batch while [`SledStore::ensure_heads`] rebuilds them.
const HEADS_REBUILD_BATCH: usize = 1_000;

/// sled's page cache. Its default (1 GiB) lets a plan of 10,000 resources hold every page it
/// read; state is read once per command, so a small cache costs nothing.
const CACHE_BYTES: u64 = 16 * 1024 * 1024;

/// Open sled in `<state_dir>/db`, retrying a held lock for [`LOCK_GRACE`].
fn open_db(state_dir: &Path) -> Result<sled::Db, StateError> {
    let deadline = Instant::now() + LOCK_GRACE;
    loop {
        match sled::Config::new()
            .path(state_dir.join("db"))
            .cache_capacity(CACHE_BYTES)
            .open()
        {
            Ok(db) => return Ok(db),
            Err(e) => match sled_error(e, state_dir) {
                StateError::Locked(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                e @ StateError::Locked(_) => return Err(e),
                e => {
                    return Err(StateError::Unreadable {
                        dir: state_dir.display().to_string(),
                        reason: e.to_string(),
                        restore: restore_hint(state_dir),
                    });
                }
            },
        }
    }
}

/// Map a sled error; its file-lock failure (another process holds the store) is
/// [`StateError::Locked`]. sled 0.34.7 reports that only as an `Other` I/O error whose message
/// begins "could not acquire lock", so the message is what identifies it (the version is
/// pinned, and `second_open_reports_locked` guards the text).
fn sled_error(e: sled::Error, dir: &Path) -> StateError {
    match e {
        sled::Error::Io(io)
            if io.kind() == io::ErrorKind::Other
                && io.to_string().starts_with("could not acquire lock") =>
        {
            StateError::Locked(dir.display().to_string())
        }
        sled::Error::Io(io) => StateError::Io(io),
        other => StateError::Sled(format!("{other}; {}", restore_hint(dir))),
    }
}

/// What a backup's head says: its lineage and serial (`None` where the head does not say).
struct Head {
    lineage: Option<String>,
    serial: Option<u64>,
}

/// The head of the backup at `path`; `Ok(None)` if there is no file. Only the fields before
/// `"resources"` are read, so a record never answers for the document.
fn read_head(path: &Path) -> Result<Option<Head>, StateError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut head = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, HEAD_BYTES), &mut head)?;
    let head = String::from_utf8_lossy(&head);
    let head = head.split("\"resources\"").next().unwrap_or_default();
    let field = |name: &str| -> Option<String> {
        let at = head.find(&format!("\"{name}\""))? + name.len() + 2;
        let value = head[at..].trim_start().strip_prefix(':')?.trim_start();
        Some(match value.strip_prefix('"') {
            Some(s) => s.split('"').next()?.to_owned(),
            None => value
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .to_owned(),
        })
    };
    Ok(Some(Head {
        lineage: field("lineage"),
        serial: field("serial").and_then(|s| s.parse().ok()),
    }))
}

/// Whether `<state_dir>/db` is absent or empty: opening it would start a new history.
fn store_missing(state_dir: &Path) -> bool {
    match fs::read_dir(state_dir.join("db")) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) => e.kind() == io::ErrorKind::NotFound,
    }
}

/// `backup.<serial>.json` files in `dir`, oldest first.
fn serial_backups(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out: Vec<(u64, PathBuf)> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let serial = name
                .to_str()?
                .strip_prefix("backup.")?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((serial, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The backup to restore: `backup.json`, else the newest `backup.<serial>.json`, else the
/// newest kept backup of another lineage (`backup-<lineage>.json`).
fn newest_backup(dir: &Path) -> Option<PathBuf> {
    let newest = dir.join(BACKUP_FILE);
    if newest.exists() {
        return Some(newest);
    }
    if let Some((_, p)) = serial_backups(dir).pop() {
        return Some(p);
    }
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("backup-") && n.ends_with(".json"))
        })
        .max_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok())
}

/// How to restore the newest backup of `dir` after its store is damaged.
fn restore_hint(dir: &Path) -> String {
    match newest_backup(dir) {
        Some(b) => format!(
            "to restore the newest backup, move the damaged store aside and import it: \
             mv {d}/db {d}/db.damaged && tend --state {d} state import {b}",
            d = dir.display(),
            b = b.display()
        ),
        None => format!("no backup exists in {} to restore from", dir.display()),
    }
}

/// Make `link` name the same file as `target`, atomically (a temporary hard link renamed
/// over `link`), then fsync the directory.
fn link_atomically(target: &Path, link: &Path) -> io::Result<()> {
    let dir = match link.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let tmp = dir.join(format!(".{BACKUP_FILE}.link-{}", hex::encode(suffix)));
    let result = fs::hard_link(target, &tmp).and_then(|()| fs::rename(&tmp, link));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result?;
    File::open(dir)?.sync_all()
}

/// Replace `path` with what `write` writes, so that a crash leaves the old file or the new one,
/// never a mix: write a temporary file beside it (0600), fsync, rename over, fsync the
/// directory.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut suffix = [0u8; 8];
    rand::rng().fill_bytes(&mut suffix);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", hex::encode(suffix)));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        write(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        // Best effort: the temporary file may not exist or may already be renamed.
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::super::codec::ENC;
    use super::*;
    use crate::address::Kind;
    use crate::model::ErrorClass;
    use crate::state::Status;
    use crate::state::{ResourceResult, Trigger};
    use crate::value::{SENSITIVE, Sensitive, Value};
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::PermissionsExt;
    use std::process::{Command, Stdio};

    const SECRET: &str = "s3cret-Zebra-Quokka-91";

    fn addr(name: &str) -> Address {
        Address::new(Kind::of("PostgresDatabase"), name)
    }

    fn secret(s: &str) -> Value {
        Value::Secret(Sensitive::new(s))
    }

    /// A record with a secret in every place one can be.
    fn sample(name: &str) -> Record {
        let mut r = Record::new(addr(name), 1_700_000_000_000);
        r.spec_hash = "abc123".to_owned();
        r.spec.insert("owner", Value::Str("app".to_owned()));
        r.spec.insert("password", secret(SECRET));
        r.spec.insert(
            "extensions",
            Value::List(vec![Value::Str("pgcrypto".to_owned()), Value::Int(3)]),
        );
        r.spec.insert("ratio", Value::Float(1.0));
        r.spec.insert("null", Value::Null);
        r.spec.insert("flag", Value::Bool(true));
        r.connection
            .insert("host", Value::Str("db.local".to_owned()));
        r.connection
            .insert("password", secret(&format!("{SECRET}-conn")));
        r.outputs
            .insert("url".to_owned(), secret(&format!("{SECRET}-url")));
        r.outputs
            .insert("name".to_owned(), Value::Str(name.to_owned()));
        r.private.insert(
            "rotation".to_owned(),
            Value::Map(crate::value::Fields::from_iter([(
                "previous".to_owned(),
                secret(&format!("{SECRET}-old")),
            )])),
        );
        r.status = Status::Ready;
        r.last_error = Some("none".to_owned());
        r.prevent_destroy = true;
        r.depends_on = vec![Address::new(Kind::of("PostgresServer"), "main")];
        r.generation = 4;
        r
    }

    fn run(id: &str) -> Run {
        Run {
            id: id.to_owned(),
            trigger: Trigger::Cli,
            summary: "Plan: 1 to add, 0 to change, 0 to destroy.".to_owned(),
            results: vec![ResourceResult {
                address: "PostgresDatabase.a".to_owned(),
                action: crate::plan::Action::Create,
                outcome: crate::state::RunOutcome::Applied,
                error_class: None,
                detail: None,
                elapsed_ms: 12,
            }],
            output_tail: vec!["ok".to_owned()],
            exit_code: 0,
            started_at: 1,
            ended_at: 2,
            revision: Some("deadbeef".to_owned()),
        }
    }

    fn open(dir: &Path) -> SledStore {
        SledStore::open(dir).expect("open store")
    }

    /// Every file under `dir` that contains `needle`.
    fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
        let mut hits = Vec::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for entry in fs::read_dir(&d).expect("read dir") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    stack.push(path);
                } else {
                    let bytes = fs::read(&path).expect("read file");
                    if bytes.windows(needle.len()).any(|w| w == needle) {
                        hits.push(path);
                    }
                }
            }
        }
        hits
    }

    /// Spawn this test binary running only [`child_process`] in `mode` on `dir`.
    fn spawn_child(mode: &str, dir: &Path) -> std::process::Child {
        Command::new(std::env::current_exe().expect("current exe"))
            .args([
                "state::store::tests::child_process",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TEND_STORE_TEST_CHILD", mode)
            .env("TEND_STORE_TEST_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child")
    }

    /// Not a test: the other process for the lock and crash tests (does nothing when run
    /// directly).
    #[test]
    #[ignore = "helper run by other tests in a child process"]
    fn child_process() {
        let (Some(mode), Some(dir)) = (
            std::env::var_os("TEND_STORE_TEST_CHILD"),
            std::env::var_os("TEND_STORE_TEST_DIR"),
        ) else {
            return;
        };
        let store = open(Path::new(&dir));
        match mode.to_str() {
            Some("hold") => {
                println!("CHILD READY");
                io::stdout().flush().expect("flush stdout");
                // Hold the store until the parent closes our stdin.
                let _ = io::copy(&mut io::stdin(), &mut io::sink());
            }
            Some("crash") => {
                store.put(&sample("a")).expect("put a");
                store.put(&sample("b")).expect("put b");
                store.remove(&addr("b")).expect("remove b");
                store.put_run(&run("00001")).expect("put run");
                // Die without destructors or sled's shutdown flush: only what `put` made
                // durable survives.
                std::process::abort();
            }
            Some("crash-parallel") => {
                // Writers racing for group commits; each put returns once it is durable.
                std::thread::scope(|scope| {
                    for t in 0..8 {
                        let store = &store;
                        scope.spawn(move || {
                            for i in 0..25 {
                                store.put(&sample(&format!("t{t}-{i}"))).expect("put");
                            }
                        });
                    }
                });
                std::process::abort();
            }
            _ => panic!("unknown child mode"),
        }
    }

    #[test]
    fn records_round_trip_with_their_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let r = sample("a");
        store.put(&r).expect("put");
        let got = store.get(&r.address).expect("get").expect("present");
        assert_eq!(got, r);
        assert_eq!(
            got.spec.get("password").and_then(Value::as_str),
            Some(SECRET)
        );
        assert!(matches!(got.spec.get("ratio"), Some(Value::Float(f)) if *f == 1.0));
        assert_eq!(store.get(&addr("missing")).expect("get"), None);
    }

    #[test]
    fn a_failed_records_class_round_trips_and_older_records_are_stored_as_before() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        // Without a class the stored form is the one older tends wrote (and read).
        let ready = sample("a");
        store.put(&ready).expect("put");
        let raw = store
            .resources
            .get(ready.address.to_string().as_bytes())
            .expect("raw")
            .expect("present");
        let doc: J = serde_json::from_slice(&raw).expect("json");
        assert!(doc.get("error_class").is_none() && doc.get("failed_inputs").is_none());
        let mut failed = sample("b");
        failed.status = Status::Failed;
        failed.error_class = Some(ErrorClass::Permanent);
        failed.failed_inputs = Some("d1:d2".to_owned());
        store.put(&failed).expect("put");
        assert_eq!(
            store.get(&failed.address).expect("get"),
            Some(failed.clone())
        );
        let raw = store
            .resources
            .get(failed.address.to_string().as_bytes())
            .expect("raw")
            .expect("present");
        let doc: J = serde_json::from_slice(&raw).expect("json");
        assert_eq!(doc["error_class"], "permanent");
    }

    #[test]
    fn raw_store_bytes_never_contain_a_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            for name in ["a", "b", "c"] {
                store.put(&sample(name)).expect("put");
            }
            store.remove(&addr("b")).expect("remove");
            store.put_run(&run("00001")).expect("put run");
            store.write_backup().expect("backup");
            let exported = store.export(true).expect("export").to_string();
            assert!(!exported.contains(SECRET));
            let hidden = store.export(false).expect("export").to_string();
            assert!(!hidden.contains(SECRET));
            assert!(files_containing(dir.path(), SECRET.as_bytes()).is_empty());
        }
        // Including whatever sled writes when it shuts down.
        assert!(files_containing(dir.path(), SECRET.as_bytes()).is_empty());
        // The scan does find plain text, so the empty result means something.
        assert!(!files_containing(dir.path(), b"db.local").is_empty());
    }

    #[test]
    fn every_write_is_durable_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lineage = {
            let store = open(dir.path());
            store.put(&sample("a")).expect("put");
            store.put(&sample("b")).expect("put");
            store.remove(&addr("b")).expect("remove");
            store.put_run(&run("00001")).expect("run");
            store.meta().expect("meta").lineage
        };
        let store = open(dir.path());
        assert_eq!(store.list().expect("list"), vec![sample("a")]);
        assert_eq!(store.run("00001").expect("run"), Some(run("00001")));
        let meta = store.meta().expect("meta");
        assert_eq!(meta.lineage, lineage);
        assert_eq!(meta.serial, 3);
    }

    #[test]
    fn every_write_is_durable_when_the_process_dies() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = spawn_child("crash", dir.path()).wait().expect("wait child");
        assert!(!status.success(), "the child aborts");
        let store = open(dir.path());
        assert_eq!(store.list().expect("list"), vec![sample("a")]);
        assert_eq!(store.run("00001").expect("run"), Some(run("00001")));
        assert_eq!(store.meta().expect("meta").serial, 3);
    }

    #[test]
    fn parallel_writers_sharing_flushes_all_survive_the_process_dying() {
        let dir = tempfile::tempdir().expect("tempdir");
        let status = spawn_child("crash-parallel", dir.path())
            .wait()
            .expect("wait child");
        assert!(!status.success(), "the child aborts");
        let store = open(dir.path());
        assert_eq!(store.list().expect("list").len(), 8 * 25);
        assert_eq!(store.meta().expect("meta").serial, 8 * 25);
    }

    #[test]
    fn new_store_has_schema_lineage_and_serial_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let meta = open(dir.path()).meta().expect("meta");
        assert_eq!(meta.schema_version, SCHEMA_VERSION);
        assert_eq!(meta.serial, 0);
        assert_eq!(meta.lineage.len(), 32);
        assert!(meta.lineage.bytes().all(|b| b.is_ascii_hexdigit()));
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(
            open(other.path()).meta().expect("meta").lineage,
            meta.lineage
        );
    }

    #[test]
    fn serial_bumps_on_resource_changes_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let serial = || store.meta().expect("meta").serial;
        store.put(&sample("a")).expect("put");
        assert_eq!(serial(), 1);
        store.put(&sample("a")).expect("put again");
        assert_eq!(serial(), 2);
        store.put_run(&run("00001")).expect("run");
        assert_eq!(serial(), 2, "runs are not resources");
        store.remove(&addr("missing")).expect("remove absent");
        assert_eq!(serial(), 2, "removing nothing changes nothing");
        store.remove(&addr("a")).expect("remove");
        assert_eq!(serial(), 3);
        assert_eq!(store.get(&addr("a")).expect("get"), None);
    }

    #[test]
    fn second_open_reports_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open(dir.path());
        let err = SledStore::open(dir.path()).expect_err("second open in one process");
        assert!(matches!(&err, StateError::Locked(p) if p == &dir.path().display().to_string()));
        drop(first);
        open(dir.path());
    }

    #[test]
    fn second_open_from_another_process_reports_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut child = spawn_child("hold", dir.path());
        let mut stdout = BufReader::new(child.stdout.take().expect("child stdout"));
        let ready = (&mut stdout)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.contains("CHILD READY"));
        assert!(ready, "child opened the store");

        let err = SledStore::open(dir.path()).expect_err("held by the child");
        assert!(matches!(err, StateError::Locked(_)), "{err}");
        assert!(err.to_string().contains("locked by another tend process"));

        drop(child.stdin.take());
        // Keep reading so the child's test harness can report without a broken pipe.
        io::copy(&mut stdout, &mut io::sink()).expect("drain child stdout");
        assert!(child.wait().expect("wait child").success());
        open(dir.path());
    }

    #[test]
    fn unknown_values_are_never_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut r = sample("a");
        r.outputs.insert(
            "later".to_owned(),
            Value::List(vec![Value::Int(1), Value::Unknown]),
        );
        let err = store.put(&r).expect_err("unknown refused");
        assert!(err.to_string().contains("outputs.later.1"), "{err}");
        let mut r = sample("a");
        r.spec.insert("nan", Value::Float(f64::NAN));
        store.put(&r).expect_err("NaN refused");
        assert_eq!(store.list().expect("list"), vec![]);
        assert_eq!(store.meta().expect("meta").serial, 0);
    }

    #[test]
    fn map_keys_that_look_like_markers_round_trip_as_plain_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut r = sample("a");
        r.spec.insert(
            "tricky",
            Value::Map(crate::value::Fields::from_iter([
                ("$enc".to_owned(), Value::Str("not a secret".to_owned())),
                ("$$x".to_owned(), Value::Int(1)),
            ])),
        );
        r.private
            .insert("$enc".to_owned(), Value::Str("plain".to_owned()));
        store.put(&r).expect("put");
        assert_eq!(store.get(&r.address).expect("get"), Some(r));
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = open(dir.path());
            store.meta.insert(META_SCHEMA, &b"2"[..]).expect("insert");
            store.flush().expect("flush");
        }
        let err = SledStore::open(dir.path()).expect_err("newer schema");
        assert!(matches!(
            err,
            StateError::Schema {
                found: 2,
                supported: 1
            }
        ));
    }

    #[test]
    fn list_is_sorted_by_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let addrs = [
            Address::new(Kind::of("PostgresDatabase"), "b"),
            Address::new(Kind::of("PostgresServer"), "z"),
            Address::new(Kind::of("PostgresDatabase"), "a"),
            Address::new(Kind::CREDENTIAL, "c"),
        ];
        for a in &addrs {
            store.put(&Record::new(a.clone(), 1)).expect("put");
        }
        let mut want = addrs.to_vec();
        want.sort();
        let got: Vec<_> = store
            .list()
            .expect("list")
            .into_iter()
            .map(|r| r.address)
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn sealed_records_carry_address_and_status_and_unseal_to_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let mut failed = sample("b");
        failed.status = Status::Failed;
        for r in [&failed, &sample("a")] {
            store.put(r).expect("put");
        }
        let sealed = store.list_sealed().expect("list sealed");
        let heads: Vec<_> = sealed
            .iter()
            .map(|s| (s.address.clone(), s.status))
            .collect();
        assert_eq!(
            heads,
            [(addr("a"), Status::Ready), (addr("b"), Status::Failed)]
        );
        assert_eq!(store.unseal(&sealed[1]).expect("unseal"), failed);
        // Sealed means undecoded: the secret is still ciphertext in its bytes.
        assert!(!String::from_utf8_lossy(sealed[0].bytes()).contains(SECRET));
    }

    #[test]
    fn runs_are_newest_first_and_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        for id in [
            "0001700000000002-0",
            "0001700000000001-0",
            "0001700000000003-0",
        ] {
            store.put_run(&run(id)).expect("put run");
        }
        let ids = |runs: Vec<Run>| runs.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(
            ids(store.runs(10).expect("runs")),
            [
                "0001700000000003-0",
                "0001700000000002-0",
                "0001700000000001-0"
            ]
        );
        assert_eq!(ids(store.runs(1).expect("runs")), ["0001700000000003-0"]);
        assert_eq!(store.runs(0).expect("runs"), vec![]);
        let mut replaced = run("0001700000000001-0");
        replaced.exit_code = 1;
        store.put_run(&replaced).expect("replace run");
        assert_eq!(
            store.run("0001700000000001-0").expect("run"),
            Some(replaced)
        );
        assert_eq!(store.run("nope").expect("run"), None);
    }

    #[test]
    fn export_without_secrets_hides_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.put(&sample("a")).expect("put");
        let doc = store.export(false).expect("export");
        let text = doc.to_string();
        assert!(!text.contains(SECRET));
        assert!(!text.contains(ENC), "no ciphertext either");
        assert_eq!(doc["secrets"], "omitted");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["serial"], 1);
        assert_eq!(doc["lineage"], store.meta().expect("meta").lineage);
        let r = &doc["resources"][0];
        assert_eq!(r["address"], "PostgresDatabase.a");
        assert_eq!(r["spec"]["password"], SENSITIVE);
        assert_eq!(r["spec"]["owner"], "app");
        assert_eq!(r["outputs"]["url"], SENSITIVE);
        assert_eq!(r["private"]["rotation"]["previous"], SENSITIVE);
        assert_eq!(r["connection"]["password"], SENSITIVE);
    }

    #[test]
    fn export_with_secrets_keeps_them_encrypted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.put(&sample("a")).expect("put");
        let doc = store.export(true).expect("export");
        assert!(!doc.to_string().contains(SECRET));
        assert_eq!(doc["secrets"], "encrypted");
        let sealed = doc["resources"][0]["spec"]["password"][ENC]
            .as_str()
            .expect("sealed secret");
        assert_eq!(store.codec.key.decrypt(sealed).expect("decrypts"), SECRET);
    }

    #[test]
    fn importing_the_same_state_again_keeps_every_record_byte_for_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        for i in 0..50 {
            store.put(&sample(&format!("r{i}"))).expect("put");
        }
        let bytes = |s: &SledStore| -> Vec<Vec<u8>> {
            s.list_sealed()
                .expect("list")
                .iter()
                .map(|r| r.bytes().to_vec())
                .collect()
        };
        let stored = bytes(&store);
        let mut doc = Vec::new();
        store.export_signed(&mut doc).expect("export");
        for _ in 0..2 {
            store.import(&doc, false).expect("import");
            // The same ciphertexts: nothing re-sealed, so nothing rewritten and the store
            // does not grow.
            assert_eq!(bytes(&store), stored);
        }
    }

    #[test]
    fn an_import_is_written_in_chunks_and_one_stopped_half_way_is_refused_until_run_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = open(&dir.path().join("source"));
        let n = IMPORT_CHUNK_RECORDS * 2 + 10;
        let records: Vec<Record> = (0..n).map(|i| sample(&format!("r{i:05}"))).collect();
        source.put_all(&records).expect("put_all");
        let mut doc = Vec::new();
        source.export_signed(&mut doc).expect("export");
        let stored = source.list_sealed().expect("list");
        drop(source);

        // A store under the same key that an import left half-way: one chunk written, then
        // the process stopped (the last transaction, which clears the mark, never ran).
        let target = dir.path().join("target");
        fs::create_dir_all(&target).expect("mkdir");
        fs::copy(
            dir.path().join("source").join("tend.key"),
            target.join("tend.key"),
        )
        .expect("key");
        {
            let store = open(&target);
            store.put(&sample("stale")).expect("put");
            let mut chunk = ImportChunk::default();
            for r in &stored[..IMPORT_CHUNK_RECORDS] {
                let k = r.address.to_string();
                chunk.heads.insert(
                    k.as_bytes(),
                    head_bytes(k.as_bytes(), r.bytes()).expect("head"),
                );
                chunk.records.insert(k.as_bytes(), r.bytes());
                chunk.len += 1;
            }
            store
                .write_import_chunk(chunk, "some-lineage 7")
                .expect("chunk");
        }
        let err = SledStore::open(&target).expect_err("a half-imported store is refused");
        assert!(matches!(err, StateError::Interrupted { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("some-lineage at serial 7") && text.contains("state import"),
            "{text}"
        );

        // Running the import again finishes it: every record of the document, none other,
        // heads beside them, and the store opens again.
        SledStore::open_to_restore(&target)
            .expect("import opens it")
            .import(&doc, false)
            .expect("import again");
        let store = open(&target);
        let bytes = |v: Vec<Sealed>| v.iter().map(|r| r.bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            bytes(store.list_sealed().expect("list")),
            bytes(stored.clone())
        );
        let (heads, from_records) = heads_and_records(&store);
        assert_eq!(heads.len(), n);
        assert_eq!(heads, from_records);
        assert_eq!(store.list().expect("decode").len(), n);
    }

    #[test]
    fn the_streamed_export_is_the_export_document() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        for name in ["a", "b", "c"] {
            store.put(&sample(name)).expect("put");
        }
        let mut out = Vec::new();
        store.export_plain(&mut out).expect("stream");
        let streamed: J = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(streamed, store.export(false).expect("export"));
        assert!(!String::from_utf8_lossy(&out).contains(SECRET));
    }

    /// A head as text: address, status, digest; and its generation.
    type Head = (String, u64);

    /// The heads a plan lists, next to those read from the records themselves.
    fn heads_and_records(store: &SledStore) -> (Vec<Head>, Vec<Head>) {
        let pick = |v: Vec<Sealed>| -> Vec<Head> {
            v.into_iter()
                .map(|s| {
                    (
                        format!("{} {:?} {}", s.address, s.status, s.spec_hash),
                        s.generation,
                    )
                })
                .collect()
        };
        (
            pick(store.list_heads().expect("heads")),
            pick(store.list_sealed().expect("records")),
        )
    }

    #[test]
    fn a_head_unseals_its_record_and_refuses_one_changed_or_gone_since_it_was_listed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (mut a, b) = (sample("a"), sample("b"));
        store.put_all(&[a.clone(), b.clone()]).expect("put_all");
        let heads = store.list_heads().expect("heads");
        assert_eq!(store.unseal(&heads[1]).expect("unchanged"), b);
        a.generation += 1;
        store.put(&a).expect("a changes");
        store.remove(&addr("b")).expect("b goes");
        for head in &heads {
            let err = store.unseal(head).expect_err("refused");
            assert!(
                err.to_string().contains("changed while it was being read"),
                "{err}"
            );
        }
    }

    #[test]
    fn heads_follow_every_write_and_are_rebuilt_when_a_store_was_written_without_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        let (a, mut b) = (sample("a"), sample("b"));
        store.put(&a).expect("put");
        store.put_all(&[b.clone(), sample("c")]).expect("put_all");
        b.generation = 7;
        b.status = Status::Failed;
        store.put(&b).expect("put again");
        store.remove(&addr("c")).expect("remove");
        let (heads, records) = heads_and_records(&store);
        assert_eq!(heads, records);
        assert_eq!(heads.len(), 2);
        assert!(
            heads.iter().any(|(h, g)| h.contains("Failed") && *g == 7),
            "{heads:?}"
        );

        // An import brings them back in step with the records it writes.
        let doc = store.export(true).expect("export").to_string();
        store.remove(&addr("a")).expect("remove");
        store.import(doc.as_bytes(), true).expect("import");
        let (heads, records) = heads_and_records(&store);
        assert_eq!((heads.len(), &heads), (2, &records));

        // A tend without heads wrote a record (and bumped the serial): the next open sees the
        // serial moved past the heads' mark and rebuilds them.
        let mut d = sample("d");
        d.generation = 3;
        store
            .resources
            .insert(
                d.address.to_string().as_bytes(),
                store.codec.encode_record(&d).expect("encode"),
            )
            .expect("raw insert");
        let serial = store.meta().expect("meta").serial;
        store
            .meta
            .insert(META_SERIAL, (serial + 1).to_string().as_bytes())
            .expect("serial");
        store.flush().expect("flush");
        assert_eq!(
            store.list_heads().expect("heads").len(),
            2,
            "not yet rebuilt"
        );
        drop(store);
        let store = open(dir.path());
        let (heads, records) = heads_and_records(&store);
        assert_eq!(heads, records);
        assert_eq!(heads.len(), 3);
        // Rebuilt once: the mark now matches, and the next open leaves the tree alone.
        assert_eq!(
            store.meta.get(META_HEADS_AT).expect("mark"),
            store.meta.get(META_SERIAL).expect("serial")
        );
    }

    #[test]
    fn import_restores_backup() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.put(&sample("a")).expect("put");
        store.put(&sample("b")).expect("put");
        store.write_backup().expect("backup");
        let before = store.meta().expect("meta");
        let backup = fs::read(dir.path().join(BACKUP_FILE)).expect("read backup");

        // Lose the records (and, as after restoring onto a fresh store, the lineage).
        store.remove(&addr("a")).expect("remove");
        store.put(&sample("c")).expect("put");
        store.import(&backup, false).expect("import");
        assert_eq!(store.list().expect("list"), vec![sample("a"), sample("b")]);
        let after = store.meta().expect("meta");
        assert_eq!(after.lineage, before.lineage);
        assert_eq!(after.serial, 5, "serial moves forward past both histories");
        drop(store);

        // A fresh state directory with the same key file takes the backup's lineage.
        let fresh = tempfile::tempdir().expect("tempdir");
        fs::copy(dir.path().join("tend.key"), fresh.path().join("tend.key")).expect("copy key");
        let store = open(fresh.path());
        store
            .import(&backup, false)
            .expect("import into fresh store");
        assert_eq!(store.list().expect("list"), vec![sample("a"), sample("b")]);
        assert_eq!(store.meta().expect("meta").lineage, before.lineage);
        assert_eq!(store.meta().expect("meta").serial, before.serial + 1);
        drop(store);
        let store = open(fresh.path());
        assert_eq!(store.list().expect("list after reopen").len(), 2);
    }

    #[test]
    fn import_refuses_an_export_without_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.put(&sample("a")).expect("put");
        let doc = store.export(false).expect("export");
        store.remove(&addr("a")).expect("remove");
        let err = store
            .import(doc.to_string().as_bytes(), true)
            .expect_err("refused");
        assert!(err.to_string().contains("without secrets"), "{err}");
        assert_eq!(store.list().expect("list"), vec![]);
    }

    #[test]
    fn import_with_another_key_is_refused_and_changes_nothing() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let doc = {
            let store = open(one.path());
            store.put(&sample("a")).expect("put");
            store.export(true).expect("export")
        };
        let store = open(two.path());
        store.put(&sample("z")).expect("put");
        let before = store.meta().expect("meta");
        let bytes = |doc: &J| doc.to_string().into_bytes();
        assert!(matches!(
            store.import(&bytes(&doc), true),
            Err(StateError::Decrypt)
        ));
        assert_eq!(store.list().expect("list"), vec![sample("z")]);
        assert_eq!(store.meta().expect("meta"), before);

        let mut newer = doc.clone();
        newer["version"] = J::from(2);
        assert!(matches!(
            store.import(&bytes(&newer), true),
            Err(StateError::Schema { found: 2, .. })
        ));
    }

    /// A store with two records and its backup written, closed.
    fn backed_up(dir: &Path) -> Vec<u8> {
        let store = open(dir);
        store.put(&sample("a")).expect("put");
        store.put(&sample("b")).expect("put");
        store.write_backup().expect("backup");
        fs::read(dir.join(BACKUP_FILE)).expect("read backup")
    }

    #[test]
    fn a_lost_store_beside_a_backup_is_refused_until_restored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backup = backed_up(dir.path());
        fs::remove_dir_all(dir.path().join("db")).expect("lose the store");
        let err = SledStore::open(dir.path()).expect_err("refused");
        let d = dir.path().display();
        assert!(matches!(err, StateError::Lost { .. }), "{err}");
        assert!(
            err.to_string()
                .contains(&format!("tend --state {d} state import {d}/backup.json")),
            "{err}"
        );
        assert!(!dir.path().join("db").exists(), "no new store was started");
        // An empty db/ is no different.
        fs::create_dir(dir.path().join("db")).expect("mkdir");
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StateError::Lost { .. })
        ));
        assert_eq!(
            fs::read(dir.path().join(BACKUP_FILE)).expect("read"),
            backup,
            "the backup is intact byte for byte"
        );

        let store = SledStore::open_to_restore(dir.path()).expect("open to restore");
        store.import(&backup, false).expect("restore");
        store.write_backup().expect("backup");
        assert_eq!(store.list().expect("list"), vec![sample("a"), sample("b")]);
        drop(store);
        open(dir.path());
    }

    #[test]
    fn an_unreadable_store_says_how_to_restore() {
        let dir = tempfile::tempdir().expect("tempdir");
        backed_up(dir.path());
        fs::remove_dir_all(dir.path().join("db")).expect("rm");
        fs::write(dir.path().join("db"), b"not a store").expect("damage");
        let err = SledStore::open(dir.path()).expect_err("unreadable");
        assert!(matches!(err, StateError::Unreadable { .. }), "{err}");
        let d = dir.path().display();
        assert!(
            err.to_string().contains(&format!(
                "mv {d}/db {d}/db.damaged && tend --state {d} state import {d}/backup.json"
            )),
            "{err}"
        );
    }

    #[test]
    fn a_tampered_or_unsigned_backup_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backup = backed_up(dir.path());
        let store = open(dir.path());
        let text = String::from_utf8(backup.clone()).expect("utf-8");
        assert!(text.contains("\"owner\":\"app\""));
        let tampered = text.replacen("\"owner\":\"app\"", "\"owner\":\"eve\"", 1);
        for allow_unsigned in [false, true] {
            assert!(matches!(
                store.import(tampered.as_bytes(), allow_unsigned),
                Err(StateError::Tampered)
            ));
        }
        let unsigned = match text.rfind(",\"mac\":") {
            Some(at) => format!("{}}}", &text[..at]),
            None => panic!("the backup is signed: {text}"),
        };
        assert!(matches!(
            store.import(unsigned.as_bytes(), false),
            Err(StateError::Unsigned)
        ));
        assert_eq!(store.list().expect("list"), vec![sample("a"), sample("b")]);
        store
            .import(unsigned.as_bytes(), true)
            .expect("unsigned allowed when asked");
        store.import(&backup, false).expect("the real one imports");
    }

    /// A reader that hands out a few bytes per read and can be read only once, like a pipe.
    struct Trickle<'a>(&'a [u8], usize);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.1 = self.1 % 7 + 1;
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn import_streams_from_an_input_read_once_and_a_bad_record_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backup = backed_up(dir.path());
        let store = open(dir.path());
        store.put(&sample("c")).expect("put");
        // Read a few bytes at a time, once, with whitespace after the MAC.
        let mut spaced = backup.clone();
        spaced.extend_from_slice(b"\n\n  \n");
        store
            .import_from(&mut Trickle(&spaced, 0), false)
            .expect("import from a pipe");
        assert_eq!(store.list().expect("list"), vec![sample("a"), sample("b")]);

        // The second record is malformed but the document is signed by the same key: the
        // first record is good and decoded, yet nothing is written.
        store.put(&sample("c")).expect("put");
        let before = (store.list().expect("list"), store.meta().expect("meta"));
        let text = String::from_utf8(backup).expect("utf-8");
        let body = &text[..text.rfind(",\"mac\":").expect("signed")];
        let Some(second) = body.match_indices("\n{").nth(1).map(|(at, _)| at) else {
            panic!("two records: {body}")
        };
        let broken = format!(
            "{}\n{{\"address\":\"PostgresDatabase.x\"}}{}",
            &body[..second],
            "\n]}"
        );
        let mut mac = store.codec.key.backup_mac();
        hmac::Mac::update(&mut mac, broken.trim_end_matches('}').as_bytes());
        let signed = format!(
            "{},\"mac\":\"{}\"}}\n",
            broken.trim_end_matches('}'),
            hex::encode(hmac::Mac::finalize(mac).into_bytes())
        );
        let err = store
            .import_from(&mut Trickle(signed.as_bytes(), 3), false)
            .expect_err("a malformed record is refused");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        assert_eq!(
            (store.list().expect("list"), store.meta().expect("meta")),
            before
        );
    }

    #[test]
    fn another_lineage_never_overwrites_backup_json() {
        let one = tempfile::tempdir().expect("tempdir");
        let two = tempfile::tempdir().expect("tempdir");
        let mine = backed_up(one.path());
        // Another history under the same key file.
        fs::copy(one.path().join("tend.key"), two.path().join("tend.key")).expect("copy key");
        let theirs = {
            let store = open(two.path());
            store.put(&sample("z")).expect("put");
            store.write_backup().expect("backup");
            fs::read(two.path().join(BACKUP_FILE)).expect("read")
        };
        let store = open(one.path());
        let newest = one.path().join(BACKUP_FILE);
        fs::write(&newest, &theirs).expect("their backup where ours was");
        let err = store.write_backup().expect_err("refused");
        assert!(matches!(err, StateError::OtherLineage { .. }), "{err}");
        assert_eq!(fs::read(&newest).expect("read"), theirs, "left as it was");
        drop(store);
        let err = SledStore::open(one.path()).expect_err("refused at open");
        assert!(err.to_string().contains("state import"), "{err}");

        // Importing another history on purpose keeps the one it replaces.
        fs::write(&newest, &mine).expect("ours back");
        let store = open(one.path());
        let ours = store.meta().expect("meta").lineage;
        store.import(&theirs, false).expect("import theirs");
        store.write_backup().expect("backup");
        let kept = one.path().join(format!("backup-{ours}.json"));
        assert_eq!(fs::read(kept).expect("kept"), mine);
        assert_eq!(store.list().expect("list"), vec![sample("z")]);
    }

    #[test]
    fn the_newest_backups_are_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        for i in 0..(BACKUPS_KEPT + 3) {
            store.put(&sample(&format!("r{i}"))).expect("put");
            store.write_backup().expect("backup");
        }
        let serials: Vec<u64> = serial_backups(dir.path())
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(serials, [4, 5, 6, 7, 8]);
        let newest = fs::read(dir.path().join(BACKUP_FILE)).expect("read");
        assert_eq!(
            newest,
            fs::read(dir.path().join("backup.8.json")).expect("read")
        );
        let head = read_head(&dir.path().join("backup.4.json"))
            .expect("head")
            .expect("exists");
        assert_eq!(head.serial, Some(4));
        assert_eq!(head.lineage, Some(store.meta().expect("meta").lineage));
    }

    #[test]
    fn a_backup_newer_than_the_store_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        backed_up(dir.path());
        {
            let store = open(dir.path());
            store.meta.insert(META_SERIAL, &b"1"[..]).expect("insert");
            store.flush().expect("flush");
        }
        let err = SledStore::open(dir.path()).expect_err("behind");
        assert!(
            matches!(
                err,
                StateError::Behind {
                    backup_serial: 2,
                    serial: 1,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn backup_is_replaced_atomically_and_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path());
        store.put(&sample("a")).expect("put");
        store.write_backup().expect("backup");
        store.put(&sample("b")).expect("put");
        store.write_backup().expect("backup again");
        let path = dir.path().join(BACKUP_FILE);
        let doc: J = serde_json::from_slice(&fs::read(&path).expect("read")).expect("json");
        assert_eq!(doc["resources"].as_array().map(Vec::len), Some(2));
        assert_eq!(doc["serial"], 2);
        let mode = fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp-"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn state_dir_is_created_private() {
        let parent = tempfile::tempdir().expect("tempdir");
        let dir = parent.path().join("nested").join("state");
        open(&dir);
        let mode = fs::metadata(&dir).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(dir.join("db").is_dir());
        assert!(dir.join("tend.key").is_file());
    }

    #[test]
    fn a_lost_key_file_is_not_silently_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        open(dir.path()).put(&sample("a")).expect("put");
        fs::remove_file(dir.path().join("tend.key")).expect("lose key");
        let err = SledStore::open(dir.path()).expect_err("refused");
        assert!(err.to_string().contains("tend.key"), "{err}");
        assert!(!dir.path().join("tend.key").exists());
    }

    #[test]
    fn digest_key_comes_from_the_key_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(dir.path()).digest_key().to_vec();
        let b = open(dir.path()).digest_key().to_vec();
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        let root = fs::read(dir.path().join("tend.key")).expect("key");
        assert_ne!(a, root);
    }

    #[test]
    fn the_store_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<SledStore>();
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Box<dyn StateStore> = Box::new(open(dir.path()));
        assert_eq!(store.meta().expect("meta").serial, 0);
    }
}
