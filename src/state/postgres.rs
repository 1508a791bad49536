//! [`PgStore`]: the [`StateStore`] in a PostgreSQL schema, so that several control hosts share
//! one state (Terraform's `pg` backend is the model: a table per kind of entry, a session
//! advisory lock per state).
//!
//! Layout (schema `tend` unless configured; created and versioned here, `LAYOUT_VERSION`):
//! `meta` (one row: schema version, lineage, serial, the writers' epoch, the key's
//! fingerprint, `migrated_to`), `resources` (address, status, the record as the codec stores
//! it, the epoch that wrote it, when), `runs` (id, run JSON, epoch) and `holders` (who holds
//! the lock: the backend pid of its session, host, pid, command, since).
//!
//! **One writer.** A store opened for writing takes `pg_try_advisory_lock` on a key derived
//! from the schema, in its own session, and fails fast naming the holder (from `holders`,
//! joined to `pg_locks` so a row left by a dead session never answers). The lock lives exactly
//! as long as that session: a killed holder's is released by PostgreSQL at once, and the
//! session sets `idle_session_timeout` to the lease (kept alive by a heartbeat every third of
//! it), so a paused holder loses it too. Taking the lock bumps `meta.epoch`.
//!
//! **Fencing.** Every write runs in a transaction that sets `tend.epoch` to the writer's epoch;
//! a statement trigger on `resources` and `runs` refuses it (SQLSTATE `TF001`) unless that is
//! the current epoch, reading `meta` `FOR SHARE` so a concurrent epoch bump orders before or
//! after it, never across. A writer that lost its lock (its session ended, another took it)
//! therefore cannot write, whatever its own clock says.
//!
//! Threading: a dedicated thread runs a current-thread tokio runtime that owns the connection;
//! the trait's synchronous methods hand it a job and block on the answer, so the store works
//! from any thread, inside an async runtime or not. Every job has a deadline.
//!
//! Must not know about manifests, plans or providers; never logs or reports the connection
//! string's password or a secret (records are sealed by the codec before they leave).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_postgres::{Client, Config, NoTls};

use super::codec::{self, Codec, SCHEMA_VERSION, parse_run, parse_stored, seal, seal_head};
use super::crypto::{KeyLocation, StateKey};
use super::{
    Dump, Lead as Lead_, Leadership, Meta, Record, Run, Sealed, StateError, StateStore, Status,
};
use crate::address::Address;

/// The version of the SQL layout this tend creates and reads.
const LAYOUT_VERSION: i32 = 1;
/// The schema used unless `--state-schema` says otherwise.
pub const DEFAULT_SCHEMA: &str = "tend";
/// How long one statement (or one transaction of them) may take.
const DEADLINE: Duration = Duration::from_secs(30);
/// Why a call got no answer at all.
const STOPPED: &str = "the state connection's worker has stopped";
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The lease of a writer's lock session unless configured: the server ends the session after
/// this long without a heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);
/// SQLSTATE of a write refused by the fencing trigger.
const FENCED: &str = "TF001";

/// Where a PostgreSQL state lives: a connection string (`postgres://…`; its password is never
/// shown) and a schema.
#[derive(Clone)]
pub struct PgTarget {
    url: String,
    schema: String,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown())
    }
}

impl PgTarget {
    /// Whether `--state` names a PostgreSQL state rather than a directory.
    pub fn is_url(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// A target from a connection URL and a schema name (a plain lowercase identifier).
    pub fn new(url: &str, schema: &str) -> Result<PgTarget, StateError> {
        let valid = !schema.is_empty()
            && schema.len() < 64
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid {
            return Err(StateError::Postgres {
                target: redact(url),
                reason: format!(
                    "the state schema `{schema}` is not a plain identifier (lowercase letters, \
                     digits and `_`, at most 63)"
                ),
            });
        }
        Config::from_str(url).map_err(|e| StateError::Postgres {
            target: redact(url),
            reason: format!("not a PostgreSQL connection URL: {e}"),
        })?;
        Ok(PgTarget {
            url: url.to_owned(),
            schema: schema.to_owned(),
        })
    }

    /// The URL with its password masked.
    pub fn url_shown(&self) -> String {
        redact(&self.url)
    }

    /// The target as shown in messages: the URL with its password masked, and the schema.
    pub fn shown(&self) -> String {
        format!("{} (schema {})", redact(&self.url), self.schema)
    }
}

/// `url` with the password of its user-info part replaced by `***` (and any `password=`
/// parameter dropped).
fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority_end, query_at) = (rest.find(['/', '?']).unwrap_or(rest.len()), rest.find('?'));
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user, host)) => match user.split_once(':') {
            Some((name, _)) => format!("{name}:***@{host}"),
            None => format!("{user}@{host}"),
        },
        None => authority.to_owned(),
    };
    let tail = match query_at {
        Some(_) => {
            let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
            let kept: Vec<&str> = query
                .split('&')
                .filter(|p| !p.to_ascii_lowercase().starts_with("password="))
                .collect();
            if kept.iter().all(|p| p.is_empty()) {
                path.to_owned()
            } else {
                format!("{path}?{}", kept.join("&"))
            }
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// How to open a [`PgStore`].
pub struct PgOpen<'a> {
    pub target: &'a PgTarget,
    /// The local directory: where the key file is looked for (see `crypto`).
    pub local_dir: &'a Path,
    /// `Some(command)`: take the lock now, naming this process `command` (e.g. `tend apply`),
    /// and write; `None`: read only, unless it takes the lock later ([`Leadership::try_lead`]).
    pub writer: Option<&'a str>,
    /// How long the lock outlives its last heartbeat, once taken.
    pub lease: Duration,
}

type Job = Box<dyn FnOnce(Conn) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// What a job gets: the connection, or why there is none.
type Conn = Result<Arc<Client>, StateError>;

/// What the worker is asked: a job on the connection, or to end the session (stepping down).
enum Msg {
    Job(Job),
    Reset,
}

/// This store's hold on the writers' lock, shared with the worker that keeps it alive.
#[derive(Default)]
struct Lead {
    /// This process holds the lock (until the worker finds the session gone).
    holding: AtomicBool,
    /// The session that held the lock ended: writes fail until [`Leadership::step_down`].
    lost: AtomicBool,
    epoch: AtomicI64,
    /// The lease runs out at this instant unless a heartbeat renews it.
    valid_until: Mutex<Option<Instant>>,
}

impl Lead {
    fn renew(&self, until: Instant) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    fn valid(&self) -> bool {
        self.valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| Instant::now() < until)
    }
}

/// The PostgreSQL-backed state store; see the module docs.
pub struct PgStore {
    shown: String,
    schema: String,
    codec: Codec,
    jobs: mpsc::UnboundedSender<Msg>,
    lead: Arc<Lead>,
    lease: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("target", &self.shown)
            .finish()
    }
}

impl PgStore {
    /// Connect, create or check the schema, and (for a writer) take the lock.
    ///
    /// Errors: [`StateError::Held`] naming the holder when another writer has the lock;
    /// [`StateError::Schema`] for a state written by a newer tend; [`StateError::Migrated`]
    /// for a state that was moved elsewhere; an I/O error when the key file is missing while
    /// the state holds records, or does not match the one the state was written with.
    pub fn open(opts: PgOpen<'_>) -> Result<PgStore, StateError> {
        let shown = opts.target.shown();
        let schema = opts.target.schema.clone();
        let mut config = Config::from_str(&opts.target.url).map_err(|e| StateError::Postgres {
            target: shown.clone(),
            reason: format!("not a PostgreSQL connection URL: {e}"),
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config
            .application_name("tend state")
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30));
        let lease = opts.lease;
        let lead = Arc::new(Lead::default());
        let jobs = spawn_worker(config, shown.clone(), lease, Arc::clone(&lead))?;
        let mut store = PgStore {
            shown,
            schema,
            // Replaced below, once the key is known; encrypting nothing meanwhile.
            codec: Codec {
                key: StateKey::ephemeral(),
            },
            jobs,
            lead,
            lease,
        };
        store.init_schema()?;
        let meta = store.read_meta_row()?;
        if let Some(to) = meta.migrated_to {
            return Err(StateError::Migrated {
                store: store.shown.clone(),
                to,
            });
        }
        if meta.schema_version > SCHEMA_VERSION {
            return Err(StateError::Schema {
                found: meta.schema_version,
                supported: SCHEMA_VERSION,
            });
        }
        store.codec.key = store.load_key(opts.local_dir, &meta)?;
        if let Some(command) = opts.writer
            && let Lead_::Follower(holder) = store.try_lead(command)?
        {
            return Err(StateError::Held {
                target: store.shown.clone(),
                holder,
            });
        }
        Ok(store)
    }

    /// The epoch this store writes with, when it holds the lock.
    pub fn epoch(&self) -> Option<i64> {
        self.lead
            .holding
            .load(Ordering::SeqCst)
            .then(|| self.lead.epoch.load(Ordering::SeqCst))
    }

    /// The key: the key file if it exists (and matches the state's fingerprint); created in
    /// `local_dir` only for a state that holds nothing yet.
    fn load_key(&self, local_dir: &Path, meta: &MetaRow) -> Result<StateKey, StateError> {
        let location = KeyLocation::from_env(local_dir);
        let fresh = meta.serial == 0 && meta.key_check.is_none();
        if location.create_if_missing() && !location.path.exists() && !fresh {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "the state key file {} is missing but the state in {} holds records \
                     encrypted with it; copy the key file from a host of this deployment \
                     (tend will not make a new one)",
                    location.path.display(),
                    self.shown
                ),
            )
            .into());
        }
        if location.create_if_missing() && !location.path.exists() {
            std::os::unix::fs::DirBuilderExt::mode(
                std::fs::DirBuilder::new().recursive(true),
                0o700,
            )
            .create(local_dir)?;
        }
        let key = StateKey::load_or_create_at(&location)?;
        if let Some(check) = &meta.key_check
            && *check != key.fingerprint()
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the state key file {} is not the key the state in {} was written with; use \
                     the key file of this deployment's other hosts",
                    location.path.display(),
                    self.shown
                ),
            )
            .into());
        }
        Ok(key)
    }

    /// Run `f` on the worker's connection, under the deadline, and wait for its answer.
    fn call<T, F, Fut>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        let answer = self.start(f)?;
        answer.recv().map_err(|_| self.worker_stopped())?
    }

    fn worker_stopped(&self) -> StateError {
        StateError::Postgres {
            target: self.shown.clone(),
            reason: STOPPED.to_owned(),
        }
    }

    /// [`PgStore::call`] without waiting: the answer comes on the returned channel.
    fn start<T, F, Fut>(
        &self,
        f: F,
    ) -> Result<std_mpsc::Receiver<Result<T, StateError>>, StateError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, StateError>> + Send + 'static,
    {
        let (tx, rx) = std_mpsc::sync_channel(1);
        let shown = self.shown.clone();
        let job: Job = Box::new(move |conn: Conn| {
            Box::pin(async move {
                let result = match conn {
                    Err(e) => Err(e),
                    Ok(client) => match tokio::time::timeout(DEADLINE, f(client)).await {
                        Ok(r) => r,
                        Err(_) => Err(StateError::Postgres {
                            target: shown,
                            reason: format!(
                                "no answer within {}",
                                humantime::format_duration(DEADLINE)
                            ),
                        }),
                    },
                };
                let _ = tx.send(result);
            })
        });
        self.jobs
            .send(Msg::Job(job))
            .map_err(|_| self.worker_stopped())?;
        Ok(rx)
    }

    /// Every stored record as (address, body), in address text order, one at a time as the
    /// rows arrive: the worker streams them (`query_raw`) over a small bounded channel that
    /// the returned iterator reads on the calling thread, so neither side holds them all.
    /// A stream cut short (deadline, connection) ends with its error.
    fn stream_rows(&self) -> Result<RowStream, StateError> {
        use futures::TryStreamExt;
        let q = self.sql("SELECT address, body FROM {s}.resources ORDER BY address");
        let shown = self.shown.clone();
        let (tx, rx) = mpsc::channel::<(String, Vec<u8>)>(64);
        let answer = self.start(move |c| async move {
            let rows = c
                .query_raw(&q, std::iter::empty::<&str>())
                .await
                .map_err(|e| pg_error(&shown, e))?;
            futures::pin_mut!(rows);
            while let Some(row) = rows.try_next().await.map_err(|e| pg_error(&shown, e))? {
                // The reader was dropped (it stopped at an error of its own): stop reading.
                if tx.send((row.get(0), row.get(1))).await.is_err() {
                    break;
                }
            }
            Ok(())
        })?;
        Ok(RowStream {
            rows: rx,
            answer: Some(answer),
            shown: self.shown.clone(),
        })
    }

    /// A statement with `{s}` replaced by the schema.
    fn sql(&self, text: &str) -> String {
        text.replace("{s}", &self.schema)
    }

    /// Create the schema and its tables if missing (serialised between tends by a transaction
    /// advisory lock; an existing layout is only read, so opening takes no table lock), and
    /// check the layout version.
    fn init_schema(&self) -> Result<(), StateError> {
        let ddl = self.sql(SCHEMA_DDL);
        let init_key = lock_key(&self.schema, "init");
        let (s, shown) = (self.schema.clone(), self.shown.clone());
        let lineage = new_lineage();
        let layout: i32 = self.call(move |c| async move {
            let pg = |e| pg_error(&shown, e);
            let exists: bool = c
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&format!("{s}.meta")],
                )
                .await
                .map_err(pg)?
                .get(0);
            if !exists {
                c.batch_execute("BEGIN").await.map_err(pg)?;
                let done = async {
                    c.execute("SELECT pg_advisory_xact_lock($1)", &[&init_key])
                        .await?;
                    c.batch_execute(&ddl).await?;
                    c.execute(
                        &format!(
                            "INSERT INTO {s}.meta (schema_version, layout_version, lineage) \
                             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
                        ),
                        &[&(SCHEMA_VERSION as i32), &LAYOUT_VERSION, &lineage],
                    )
                    .await
                }
                .await;
                match done {
                    Ok(_) => c.batch_execute("COMMIT").await.map_err(pg)?,
                    Err(e) => {
                        let _ = c.batch_execute("ROLLBACK").await;
                        return Err(pg(e));
                    }
                }
            }
            let row = c
                .query_one(&format!("SELECT layout_version FROM {s}.meta"), &[])
                .await
                .map_err(pg)?;
            Ok(row.get(0))
        })?;
        if layout > LAYOUT_VERSION {
            return Err(StateError::Postgres {
                target: self.shown.clone(),
                reason: format!(
                    "the state's tables are layout {layout}, newer than this tend understands \
                     ({LAYOUT_VERSION})"
                ),
            });
        }
        Ok(())
    }

    fn read_meta_row(&self) -> Result<MetaRow, StateError> {
        let q = self.sql(
            "SELECT schema_version, lineage, serial, epoch, key_check, migrated_to FROM {s}.meta",
        );
        let shown = self.shown.clone();
        self.call(move |c| async move {
            let row = c
                .query_one(&q, &[])
                .await
                .map_err(|e| pg_error(&shown, e))?;
            Ok(MetaRow {
                schema_version: u32::try_from(row.get::<_, i32>(0)).unwrap_or(u32::MAX),
                lineage: row.get(1),
                serial: u64::try_from(row.get::<_, i64>(2)).unwrap_or(0),
                key_check: row.get(4),
                migrated_to: row.get(5),
            })
        })
    }

    /// An update of `meta` with one text parameter, outside the fence (the lock holder's
    /// bookkeeping).
    fn exec_meta(&self, statement: &str, value: String) -> Result<(), StateError> {
        let q = self.sql(statement);
        let shown = self.shown.clone();
        self.call(move |c| async move {
            c.execute(&q, &[&value])
                .await
                .map(drop)
                .map_err(|e| pg_error(&shown, e))
        })
    }

    /// Take the writers' lock, or say who holds it; on success record who holds it, bump the
    /// epoch and set the session's lease.
    fn take_lock(&self, command: &str) -> Result<Lead_, StateError> {
        let key = lock_key(&self.schema, "writer");
        let (s, shown) = (self.schema.clone(), self.shown.clone());
        let command = command.to_owned();
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let started = Instant::now();
        let got: Result<i64, String> = self.call(move |c| async move {
            let pg = |e| pg_error(&shown, e);
            let taken: bool = c
                .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
                .await
                .map_err(pg)?
                .get(0);
            if !taken {
                return Ok(Err(holder(&c, &s, key).await.map_err(pg)?));
            }
            let version: i32 = c
                .query_one("SELECT current_setting('server_version_num')::int", &[])
                .await
                .map_err(pg)?
                .get(0);
            if version >= 140_000 {
                c.batch_execute(&format!("SET idle_session_timeout = {lease_ms}"))
                    .await
                    .map_err(pg)?;
            }
            c.batch_execute(&format!(
                "DELETE FROM {s}.holders WHERE backend_pid NOT IN \
                     (SELECT pid FROM pg_stat_activity WHERE pid IS NOT NULL)"
            ))
            .await
            .map_err(pg)?;
            let epoch: i64 = c
                .query_one(
                    &format!("UPDATE {s}.meta SET epoch = epoch + 1 RETURNING epoch"),
                    &[],
                )
                .await
                .map_err(pg)?
                .get(0);
            c.execute(
                &format!(
                    "INSERT INTO {s}.holders (backend_pid, host, pid, command, epoch) \
                         VALUES (pg_backend_pid(), $1, $2, $3, $4) \
                         ON CONFLICT (backend_pid) DO UPDATE SET host = $1, pid = $2, \
                         command = $3, epoch = $4, since = now()"
                ),
                &[
                    &hostname(),
                    &i32::try_from(std::process::id()).unwrap_or(i32::MAX),
                    &command,
                    &epoch,
                ],
            )
            .await
            .map_err(pg)?;
            Ok(Ok(epoch))
        })?;
        match got {
            Ok(epoch) => {
                self.lead.epoch.store(epoch, Ordering::SeqCst);
                self.lead.renew(started + self.lease);
                self.lead.lost.store(false, Ordering::SeqCst);
                self.lead.holding.store(true, Ordering::SeqCst);
                Ok(Lead_::Leading { epoch })
            }
            Err(holder) => Ok(Lead_::Follower(holder)),
        }
    }

    /// The epoch to write with, or why this store may not write.
    fn writer_epoch(&self) -> Result<i64, StateError> {
        if self.lead.lost.load(Ordering::SeqCst) {
            return Err(lost(&self.shown));
        }
        self.epoch().ok_or_else(|| StateError::Postgres {
            target: self.shown.clone(),
            reason: "this command opened the state read-only".to_owned(),
        })
    }

    /// Run `body` in a fenced transaction: `tend.epoch` set to this writer's epoch, so the
    /// triggers refuse it if another writer took over.
    fn fenced<T, F, Fut>(&self, body: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Client>, String) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        let epoch = self.writer_epoch()?;
        let (s, shown) = (self.schema.clone(), self.shown.clone());
        self.call(move |c| async move {
            c.batch_execute("BEGIN")
                .await
                .map_err(|e| pg_error(&shown, e))?;
            let done = async {
                c.execute(
                    "SELECT set_config('tend.epoch', $1, true)",
                    &[&epoch.to_string()],
                )
                .await?;
                body(Arc::clone(&c), s).await
            }
            .await;
            let done = match done {
                Ok(v) => c.batch_execute("COMMIT").await.map(|()| v),
                Err(e) => {
                    let _ = c.batch_execute("ROLLBACK").await;
                    Err(e)
                }
            };
            done.map_err(|e| match e.as_db_error() {
                Some(db) if db.code().code() == FENCED => StateError::Fenced {
                    target: shown.clone(),
                    reason: db.message().to_owned(),
                },
                _ => pg_error(&shown, e),
            })
        })
    }

    /// Every stored record, undecoded, sorted by address (each row's body is copied once,
    /// into its `Sealed`, as it arrives).
    fn rows(&self) -> Result<Vec<Sealed>, StateError> {
        self.sealed_rows(seal)
    }

    /// Every row made into a `Sealed` by `make` (its key and body) as it arrives, sorted by
    /// address.
    fn sealed_rows(
        &self,
        make: fn(&[u8], &[u8]) -> Result<Sealed, StateError>,
    ) -> Result<Vec<Sealed>, StateError> {
        let mut out = self
            .stream_rows()?
            .map(|row| row.and_then(|(key, body)| make(key.as_bytes(), &body)))
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| a.address.cmp(&b.address));
        Ok(out)
    }

    /// One record's stored bytes, if it is there.
    fn body(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let q = self.sql("SELECT body FROM {s}.resources WHERE address = $1");
        let (k, shown) = (key.to_owned(), self.shown.clone());
        self.call(move |c| async move {
            Ok(c.query_opt(&q, &[&k])
                .await
                .map_err(|e| pg_error(&shown, e))?
                .map(|r| r.get(0)))
        })
    }
}

impl Leadership for PgStore {
    fn try_lead(&self, command: &str) -> Result<Lead_, StateError> {
        if self.leading() {
            return Ok(Lead_::Leading {
                epoch: self.lead.epoch.load(Ordering::SeqCst),
            });
        }
        let taken = self.take_lock(command)?;
        if matches!(taken, Lead_::Leading { .. }) && self.read_meta_row()?.key_check.is_none() {
            self.exec_meta(
                "UPDATE {s}.meta SET key_check = $1",
                self.codec.key.fingerprint(),
            )?;
        }
        Ok(taken)
    }

    fn leading(&self) -> bool {
        self.lead.holding.load(Ordering::SeqCst)
            && !self.lead.lost.load(Ordering::SeqCst)
            && self.lead.valid()
    }

    fn step_down(&self) {
        self.lead.holding.store(false, Ordering::SeqCst);
        let _ = self.jobs.send(Msg::Reset);
    }

    fn lease(&self) -> Duration {
        self.lease
    }
}

/// Insert or replace records (address, status, stored bytes) in one statement.
/// [`PgStore::stream_rows`]: the rows as they arrive, then the worker's answer.
struct RowStream {
    rows: mpsc::Receiver<(String, Vec<u8>)>,
    /// Taken once the rows end: an error there is the stream's last item.
    answer: Option<std_mpsc::Receiver<Result<(), StateError>>>,
    shown: String,
}

impl Iterator for RowStream {
    type Item = Result<(String, Vec<u8>), StateError>;

    fn next(&mut self) -> Option<Self::Item> {
        // Blocks like `PgStore::call` does (`blocking_recv` would refuse to inside a runtime,
        // where a test or a caller without `spawn_blocking` may be). Unconstrained: on a
        // runtime's thread, tokio's task budget would otherwise run out after 128 rows and
        // wait for that runtime, which this very wait blocks.
        let next = tokio::task::unconstrained(self.rows.recv());
        if let Some(row) = futures::executor::block_on(next) {
            return Some(Ok(row));
        }
        let answer = self.answer.take()?;
        match answer.recv() {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(Err(e)),
            Err(_) => Some(Err(StateError::Postgres {
                target: self.shown.clone(),
                reason: STOPPED.to_owned(),
            })),
        }
    }
}

/// A record as its row is written: address, status, stored bytes.
type Row = (String, String, Vec<u8>);
/// `state import` (and `state migrate` into PostgreSQL) writes its rows in chunks of this
/// many records (or, for the import, bytes).
const IMPORT_CHUNK_RECORDS: usize = 1024;
const IMPORT_CHUNK_BYTES: usize = 4 * 1024 * 1024;

async fn upsert_resources(
    c: &Client,
    s: &str,
    records: &[Row],
) -> Result<u64, tokio_postgres::Error> {
    let addresses: Vec<&str> = records.iter().map(|r| r.0.as_str()).collect();
    let statuses: Vec<&str> = records.iter().map(|r| r.1.as_str()).collect();
    let bodies: Vec<&[u8]> = records.iter().map(|r| r.2.as_slice()).collect();
    c.execute(
        &format!(
            "INSERT INTO {s}.resources (address, status, body, epoch) \
             SELECT a, st, b, current_setting('tend.epoch')::bigint \
             FROM unnest($1::text[], $2::text[], $3::bytea[]) AS t(a, st, b) \
             ON CONFLICT (address) DO UPDATE SET status = excluded.status, body = excluded.body, \
             epoch = excluded.epoch, written_at = now()"
        ),
        &[&addresses, &statuses, &bodies],
    )
    .await
}

/// Bump the serial (inside a fenced transaction).
async fn bump_serial(c: &Client, s: &str) -> Result<(), tokio_postgres::Error> {
    c.execute(&format!("UPDATE {s}.meta SET serial = serial + 1"), &[])
        .await
        .map(drop)
}

impl StateStore for PgStore {
    fn meta(&self) -> Result<Meta, StateError> {
        let m = self.read_meta_row()?;
        Ok(Meta {
            schema_version: m.schema_version,
            lineage: m.lineage,
            serial: m.serial,
        })
    }

    fn get(&self, address: &Address) -> Result<Option<Record>, StateError> {
        let key = address.to_string();
        self.body(&key)?
            .map(|b| self.codec.decode_record(parse_stored(key.as_bytes(), &b)?))
            .transpose()
    }

    fn put(&self, record: &Record) -> Result<(), StateError> {
        let row = vec![(
            record.address.to_string(),
            record.status.as_str().to_owned(),
            self.codec.encode_record(record)?,
        )];
        self.fenced(move |c, s| async move {
            upsert_resources(&c, &s, &row).await?;
            bump_serial(&c, &s).await
        })
    }

    fn remove(&self, address: &Address) -> Result<(), StateError> {
        let key = address.to_string();
        self.fenced(move |c, s| async move {
            let gone = c
                .execute(
                    &format!("DELETE FROM {s}.resources WHERE address = $1"),
                    &[&key],
                )
                .await?;
            if gone > 0 {
                bump_serial(&c, &s).await?;
            }
            Ok(())
        })
    }

    fn list_sealed(&self) -> Result<Vec<Sealed>, StateError> {
        self.rows()
    }

    /// Every body is still read (the head lives inside it), but only the head is kept.
    fn list_heads(&self) -> Result<Vec<Sealed>, StateError> {
        self.sealed_rows(seal_head)
    }

    fn unseal(&self, sealed: &Sealed) -> Result<Record, StateError> {
        self.codec.unseal(sealed, |key| self.body(key))
    }

    fn put_run(&self, run: &Run) -> Result<(), StateError> {
        let body = serde_json::to_vec(run).map_err(|e| StateError::Corrupt {
            key: format!("run {}", run.id),
            reason: e.to_string(),
        })?;
        let id = run.id.clone();
        self.fenced(move |c, s| async move {
            c.execute(
                &format!(
                    "INSERT INTO {s}.runs (id, body, epoch) VALUES ($1, $2, \
                     current_setting('tend.epoch')::bigint) ON CONFLICT (id) DO UPDATE SET \
                     body = excluded.body, epoch = excluded.epoch, written_at = now()"
                ),
                &[&id, &body],
            )
            .await
            .map(drop)
        })
    }

    fn runs(&self, limit: usize) -> Result<Vec<Run>, StateError> {
        let q = self.sql("SELECT id, body FROM {s}.runs ORDER BY id DESC LIMIT $1");
        let (shown, limit) = (self.shown.clone(), i64::try_from(limit).unwrap_or(i64::MAX));
        let rows: Vec<(String, Vec<u8>)> = self.call(move |c| async move {
            let rows = c
                .query(&q, &[&limit])
                .await
                .map_err(|e| pg_error(&shown, e))?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })?;
        rows.iter()
            .map(|(id, body)| parse_run(id.as_bytes(), body))
            .collect()
    }

    fn run(&self, id: &str) -> Result<Option<Run>, StateError> {
        let q = self.sql("SELECT body FROM {s}.runs WHERE id = $1");
        let (shown, key) = (self.shown.clone(), id.to_owned());
        let body: Option<Vec<u8>> = self.call(move |c| async move {
            Ok(c.query_opt(&q, &[&key])
                .await
                .map_err(|e| pg_error(&shown, e))?
                .map(|r| r.get(0)))
        })?;
        body.map(|b| parse_run(id.as_bytes(), &b)).transpose()
    }

    fn digest_key(&self) -> &[u8] {
        self.codec.key.digest_key()
    }

    fn leadership(&self) -> Option<&dyn Leadership> {
        Some(self)
    }

    fn export(&self, include_secrets: bool) -> Result<serde_json::Value, StateError> {
        let stored = self
            .rows()?
            .into_iter()
            .map(|r| parse_stored(r.address.to_string().as_bytes(), r.bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        self.codec.export(&self.meta()?, stored, include_secrets)
    }

    /// Streamed: each row is written as it arrives (see [`PgStore::each_row`]).
    fn export_signed(&self, out: &mut dyn std::io::Write) -> Result<(), StateError> {
        // The meta first: the worker answers one job at a time, and the stream is one.
        let meta = self.meta()?;
        let rows = self.stream_rows()?.map(|r| r.map(|(_, body)| body));
        self.codec.write_signed(&meta, rows, out)
    }

    /// Streamed like [`PgStore::export_signed`].
    fn export_plain(&self, out: &mut dyn std::io::Write) -> Result<(), StateError> {
        let meta = self.meta()?;
        codec::write_plain(&meta, self.stream_rows()?, out)
    }

    fn import_from(
        &self,
        input: &mut dyn std::io::Read,
        allow_unsigned: bool,
    ) -> Result<(), StateError> {
        let mut doc = self.codec.spool(input, allow_unsigned)?;
        let (lineage, serial) = self.codec.import_head(&mut doc)?;
        // First every record is checked and nothing written: a bad document writes nothing.
        let keep: Vec<String> = self.codec.verify_records(&mut doc)?.into_iter().collect();
        let serial = i64::try_from(serial).unwrap_or(i64::MAX);
        // Then the document is read again on a thread of its own and written in chunks, all in
        // one fenced transaction: memory holds a chunk or two, never the document.
        // Each message is a chunk and whether it is the last: a reader that stopped without
        // sending its last one (it panicked) leaves the import rolled back, not half-done.
        let (tx, mut rx) = mpsc::channel::<Result<(Vec<Row>, bool), StateError>>(2);
        let reader = std::thread::spawn(move || {
            #[derive(Deserialize)]
            struct Head {
                status: Status,
            }
            let mut chunk = Vec::new();
            let mut bytes = 0;
            let read = codec::import_records(&mut doc, &mut |address, body| {
                let head: Head =
                    serde_json::from_slice(&body).map_err(|e| StateError::Corrupt {
                        key: address.clone(),
                        reason: e.to_string(),
                    })?;
                bytes += body.len();
                chunk.push((address, head.status.as_str().to_owned(), body));
                if chunk.len() >= IMPORT_CHUNK_RECORDS || bytes >= IMPORT_CHUNK_BYTES {
                    bytes = 0;
                    tx.blocking_send(Ok((std::mem::take(&mut chunk), false)))
                        .map_err(|_| std::io::Error::other("the import was abandoned"))?;
                }
                Ok(())
            });
            let _ = tx.blocking_send(read.map(|()| (chunk, true)));
        });
        let shown = self.shown.clone();
        let written = self.fenced(move |c, s| async move {
            c.execute(
                &format!("DELETE FROM {s}.resources WHERE NOT (address = ANY($1))"),
                &[&keep],
            )
            .await?;
            loop {
                let failed = match rx.recv().await {
                    Some(Ok((rows, last))) => {
                        upsert_resources(&c, &s, &rows).await?;
                        if last {
                            break;
                        }
                        continue;
                    }
                    Some(Err(e)) => e,
                    None => StateError::Postgres {
                        target: shown,
                        reason: "the import's reader stopped before the end of the document; \
                                 nothing was imported"
                            .to_owned(),
                    },
                };
                // Nothing of this transaction may stay (`fenced` commits an `Ok`).
                c.batch_execute("ROLLBACK").await?;
                return Ok(Err(failed));
            }
            c.execute(
                &format!("UPDATE {s}.meta SET lineage = $1, serial = greatest(serial, $2) + 1"),
                &[&lineage, &serial],
            )
            .await
            .map(|_| Ok(()))
        });
        // The reader ends once its channel is closed, whichever way the writer ended.
        let _ = reader.join();
        written?
    }

    fn load(&self, dump: &Dump) -> Result<(), StateError> {
        // A clone shares each record's bytes; rows are copied out a chunk at a time below.
        let records = dump.records.clone();
        let runs = dump
            .runs
            .iter()
            .map(|run| {
                serde_json::to_vec(run)
                    .map(|b| (run.id.clone(), b))
                    .map_err(|e| StateError::Corrupt {
                        key: format!("run {}", run.id),
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let (lineage, serial) = (
            dump.lineage.clone(),
            i64::try_from(dump.serial).unwrap_or(i64::MAX),
        );
        let shown = self.shown.clone();
        self.fenced(move |c, s| async move {
            let empty: bool = c
                .query_one(
                    &format!(
                        "SELECT NOT EXISTS (SELECT 1 FROM {s}.resources) \
                         AND NOT EXISTS (SELECT 1 FROM {s}.runs)"
                    ),
                    &[],
                )
                .await?
                .get(0);
            if !empty {
                return Ok(Err(StateError::NotEmpty { store: shown }));
            }
            for chunk in records.chunks(IMPORT_CHUNK_RECORDS) {
                let rows: Vec<Row> = chunk
                    .iter()
                    .map(|r| {
                        (
                            r.address.to_string(),
                            r.status.as_str().to_owned(),
                            r.bytes().to_vec(),
                        )
                    })
                    .collect();
                upsert_resources(&c, &s, &rows).await?;
            }
            let (ids, bodies): (Vec<String>, Vec<Vec<u8>>) = runs.into_iter().unzip();
            c.execute(
                &format!(
                    "INSERT INTO {s}.runs (id, body, epoch) SELECT id, body, \
                     current_setting('tend.epoch')::bigint \
                     FROM unnest($1::text[], $2::bytea[]) AS t(id, body)"
                ),
                &[&ids, &bodies],
            )
            .await?;
            c.execute(
                &format!("UPDATE {s}.meta SET lineage = $1, serial = $2"),
                &[&lineage, &serial],
            )
            .await?;
            Ok(Ok(()))
        })?
    }

    fn mark_migrated(&self, to: &str) -> Result<(), StateError> {
        self.writer_epoch()?;
        self.exec_meta("UPDATE {s}.meta SET migrated_to = $1", to.to_owned())
    }

    /// PostgreSQL's own backups (base backups, WAL archiving, a managed service's snapshots)
    /// cover a state kept there; `tend state export --include-secrets` writes a signed copy on
    /// demand. Nothing is written locally.
    fn write_backup(&self) -> Result<(), StateError> {
        Ok(())
    }
}

/// `meta` as read.
struct MetaRow {
    schema_version: u32,
    lineage: String,
    serial: u64,
    key_check: Option<String>,
    migrated_to: Option<String>,
}

/// Who holds the writers' lock, for the error that names them.
async fn holder(c: &Client, s: &str, key: i64) -> Result<String, tokio_postgres::Error> {
    let row = c
        .query_opt(
            &format!(
                "SELECT h.host, h.pid, h.command, \
                 to_char(h.since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), l.pid \
                 FROM pg_locks l LEFT JOIN {s}.holders h ON h.backend_pid = l.pid \
                 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                 AND ((l.classid::bigint << 32) | l.objid::bigint) = $1"
            ),
            &[&key],
        )
        .await?;
    Ok(match row {
        None => "another tend (it has just released it; try again)".to_owned(),
        Some(r) => {
            let backend: i32 = r.get(4);
            match (
                r.get::<_, Option<String>>(0),
                r.get::<_, Option<i32>>(1),
                r.get::<_, Option<String>>(2),
                r.get::<_, Option<String>>(3),
            ) {
                (Some(host), Some(pid), Some(command), Some(since)) => format!(
                    "`{command}` on host {host}, pid {pid}, since {since} (PostgreSQL session \
                     {backend}; the lock ends with that session)"
                ),
                _ => format!(
                    "PostgreSQL session {backend}, which did not say who it is (the lock ends \
                     with that session)"
                ),
            }
        }
    })
}

/// A stable advisory-lock key for `purpose` on `schema` (top bit clear, so `pg_locks`'
/// `classid`/`objid` recombine to it).
fn lock_key(schema: &str, purpose: &str) -> i64 {
    let digest = Sha256::digest(format!("tend state {purpose}\0{schema}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_be_bytes(first) & i64::MAX
}

fn new_lineage() -> String {
    let mut lineage = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut lineage);
    hex::encode(lineage)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "(unknown host)".to_owned())
}

fn pg_error(shown: &str, e: tokio_postgres::Error) -> StateError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None if e.is_closed() => "the connection is closed".to_owned(),
        None => {
            let mut text = e.to_string();
            if let Some(source) = std::error::Error::source(&e) {
                text = format!("{text}: {source}");
            }
            text
        }
    };
    StateError::Postgres {
        target: shown.to_owned(),
        reason,
    }
}

/// Start the connection's thread; returns once connected (or with why it could not). While
/// `lead` says the lock is held, a heartbeat every third of `lease` keeps its session alive
/// and renews the lease; a session found gone marks the lock lost.
fn spawn_worker(
    config: Config,
    shown: String,
    lease: Duration,
    lead: Arc<Lead>,
) -> Result<mpsc::UnboundedSender<Msg>, StateError> {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<Msg>();
    let (ready_tx, ready) = std_mpsc::sync_channel::<Result<(), StateError>>(1);
    let thread_shown = shown.clone();
    std::thread::Builder::new()
        .name("tend-state-pg".to_owned())
        .spawn(move || {
            let shown = thread_shown;
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(StateError::Io(e)));
                    return;
                }
            };
            rt.block_on(async move {
                let mut current = match connect(&config, &shown).await {
                    Ok(c) => Some(Arc::new(c)),
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let period = lease / 3;
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                // The lock's session is gone: no reconnecting under it until a step-down.
                let gone = |current: &mut Option<Arc<Client>>| {
                    *current = None;
                    lead.lost.store(true, Ordering::SeqCst);
                    lead.holding.store(false, Ordering::SeqCst);
                };
                loop {
                    tokio::select! {
                        msg = jobs.recv() => match msg {
                            None => break,
                            Some(Msg::Reset) => {
                                // Ending the session releases the lock and its settings.
                                current = None;
                                lead.lost.store(false, Ordering::SeqCst);
                            }
                            Some(Msg::Job(job)) => {
                                let holding = lead.holding.load(Ordering::SeqCst);
                                let conn = match &current {
                                    Some(c) if !c.is_closed() => Ok(Arc::clone(c)),
                                    Some(_) if holding => {
                                        gone(&mut current);
                                        Err(lost(&shown))
                                    }
                                    _ if lead.lost.load(Ordering::SeqCst) => Err(lost(&shown)),
                                    // A reader reconnects after losing its connection.
                                    _ => match connect(&config, &shown).await {
                                        Ok(c) => {
                                            let c = Arc::new(c);
                                            current = Some(Arc::clone(&c));
                                            Ok(c)
                                        }
                                        Err(e) => Err(e),
                                    },
                                };
                                job(conn).await;
                            }
                        },
                        _ = tick.tick() => {
                            if !lead.holding.load(Ordering::SeqCst) {
                                continue;
                            }
                            let Some(c) = &current else { continue };
                            let sent = Instant::now();
                            let ok = tokio::time::timeout(period, c.batch_execute("SELECT 1"))
                                .await
                                .is_ok_and(|r| r.is_ok());
                            if ok {
                                lead.renew(sent + lease);
                            } else {
                                tracing::warn!(
                                    state = %shown,
                                    "the state lock's session stopped answering; this tend no \
                                     longer holds the lock"
                                );
                                gone(&mut current);
                            }
                        }
                    }
                }
            });
        })
        .map_err(StateError::Io)?;
    ready.recv().map_err(|_| StateError::Postgres {
        target: shown,
        reason: "the state connection's worker stopped while connecting".to_owned(),
    })??;
    Ok(jobs_tx)
}

fn lost(shown: &str) -> StateError {
    StateError::Fenced {
        target: shown.to_owned(),
        reason: "the session holding the state lock ended (its lease ran out, or the \
                 connection was cut); nothing more is written"
            .to_owned(),
    }
}

async fn connect(config: &Config, shown: &str) -> Result<Client, StateError> {
    let err = |e| pg_error(shown, e);
    let client = match config.get_ssl_mode() {
        tokio_postgres::config::SslMode::Disable => {
            let (client, connection) = config.connect(NoTls).await.map_err(err)?;
            tokio::spawn(connection);
            client
        }
        _ => {
            let tls = crate::pg::encrypt_only_tls().map_err(|reason| StateError::Postgres {
                target: shown.to_owned(),
                reason,
            })?;
            let (client, connection) = config.connect(tls).await.map_err(err)?;
            tokio::spawn(connection);
            client
        }
    };
    client
        .batch_execute(&format!("SET statement_timeout = {}", DEADLINE.as_millis()))
        .await
        .map_err(err)?;
    Ok(client)
}

/// The tables, the fencing function and its triggers, for schema `{s}`.
const SCHEMA_DDL: &str = r#"
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.meta (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    schema_version integer NOT NULL,
    layout_version integer NOT NULL,
    lineage text NOT NULL,
    serial bigint NOT NULL DEFAULT 0,
    epoch bigint NOT NULL DEFAULT 0,
    key_check text,
    migrated_to text
);
CREATE TABLE IF NOT EXISTS {s}.resources (
    address text PRIMARY KEY,
    status text NOT NULL,
    body bytea NOT NULL,
    epoch bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.runs (
    id text PRIMARY KEY,
    body bytea NOT NULL,
    epoch bigint NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.holders (
    backend_pid integer PRIMARY KEY,
    host text NOT NULL,
    pid integer NOT NULL,
    command text NOT NULL,
    epoch bigint NOT NULL,
    since timestamptz NOT NULL DEFAULT now()
);
CREATE OR REPLACE FUNCTION {s}.fence() RETURNS trigger LANGUAGE plpgsql AS $fence$
DECLARE
    mine text := current_setting('tend.epoch', true);
    current_epoch bigint;
BEGIN
    SELECT epoch INTO current_epoch FROM {s}.meta FOR SHARE;
    IF mine IS NULL OR mine = '' OR mine::bigint <> current_epoch THEN
        RAISE EXCEPTION 'write refused: the writer''s epoch is %, the state''s is % (another tend holds the lock)',
            coalesce(nullif(mine, ''), 'none'), current_epoch
            USING ERRCODE = 'TF001';
    END IF;
    RETURN NULL;
END
$fence$;
CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE ON {s}.resources
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.fence();
CREATE TRIGGER fence BEFORE INSERT OR UPDATE OR DELETE ON {s}.runs
    FOR EACH STATEMENT EXECUTE FUNCTION {s}.fence();
"#;
