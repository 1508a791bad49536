//! Connections to PostgreSQL servers: a small pool of admin connections per server (so several
//! CREATE DATABASEs can run in parallel — one backend runs statements serially), TLS through
//! rustls, and checking a tenant role's password: against its stored verifier when the admin
//! can read `pg_authid`, else by a one-off log-in as the role.
//!
//! tokio-postgres reads no PG* environment variable; every [`Config`] is built here from a
//! [`Server`]. Must not log a password or a statement that carries one, and must not hand a
//! connection back to the pool unless the operation using it finished (a cancelled action
//! drops its connection instead).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Config, NoTls, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Log targets capped at info whatever `RUST_LOG` says: tokio-postgres logs every statement at
/// debug, and the ones that set a password carry its verifier (`CREATE ROLE … PASSWORD
/// 'SCRAM-SHA-256$…'`). tend logs its own statements, verifiers left out
/// ([`Admin::execute_sensitive`]).
pub const QUIET_LOG_TARGETS: &[&str] = &["tokio_postgres=info", "postgres_protocol=info"];

use crate::provider::ProviderError;
use crate::value::Sensitive;

use super::error;
use super::reconcile::Catalog;
use super::spec::{Server, SslMode};
use super::{sql, verifier};

/// Admin connections kept per server; also the provider's per-server concurrency limit.
pub const MAX_ADMIN_CONNECTIONS: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// An idle admin connection older than this is closed rather than reused, so a daemon never
/// trips over connections a server or a NAT silently dropped between resyncs.
const IDLE_LIFETIME: Duration = Duration::from_secs(120);
const APPLICATION_NAME: &str = "tend";

/// What the admin connection is, learnt once per connection.
#[derive(Clone, Debug)]
pub struct ServerInfo {
    /// `server_version_num`, e.g. 150018.
    pub version: i32,
    /// `current_user`.
    pub user: String,
    pub superuser: bool,
}

/// Connections are shared by servers with the same address, admin user, maintenance database
/// and TLS mode. The password is not part of the key: a rotated admin password applies to new
/// connections, open ones stay valid.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    host: String,
    port: u16,
    user: String,
    database: String,
    sslmode: SslMode,
}

/// What the admin could read of a role's password, to check a recorded password against.
pub enum StoredPassword {
    /// `pg_authid.rolpassword`; `None` when the role has no password.
    Verifier(Option<Sensitive>),
    /// `pg_authid` is readable by superusers only: a log-in has to tell.
    Unreadable,
}

struct Idle {
    client: Client,
    info: ServerInfo,
    since: Instant,
}

struct Pool {
    permits: Arc<Semaphore>,
    idle: Mutex<Vec<Idle>>,
    /// The last catalog read (single flight: readers wait on the lock while one reads).
    catalog: tokio::sync::Mutex<Option<CachedCatalog>>,
    /// Bumped around every write to the server: a catalog read before it is stale.
    writes: AtomicU64,
}

/// A catalog read and what it was read under.
struct CachedCatalog {
    refresh: u64,
    writes: u64,
    at: Instant,
    catalog: Arc<Catalog>,
}

/// How long one catalog read serves a refresh: a refresh that takes longer reads it again.
const CATALOG_LIFETIME: Duration = Duration::from_secs(30);

/// All admin pools of one provider, plus the TLS setup they share.
#[derive(Default)]
pub struct Pools {
    pools: Mutex<HashMap<PoolKey, Arc<Pool>>>,
    tls: OnceLock<Result<MakeRustlsConnect, String>>,
    /// Bumped when a refresh begins: every catalog read before it is stale.
    refresh: AtomicU64,
    /// Refreshes under way.
    refreshing: AtomicUsize,
}

/// An admin connection on loan. Give it back with [`Admin::release`] when the operation
/// finished; dropping it (e.g. on a timeout) closes the connection instead.
pub struct Admin {
    client: Client,
    pub info: ServerInfo,
    pool: Arc<Pool>,
    permit: OwnedSemaphorePermit,
}

impl Pools {
    /// An admin connection to `server`, reused when one is idle.
    pub async fn admin(&self, server: &Server) -> Result<Admin, ProviderError> {
        let pool = self.pool(server);
        let permit = pool
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ProviderError::transient("the postgres connection pool was closed"))?;
        while let Some(idle) = pool.take_idle() {
            if !idle.client.is_closed() && idle.since.elapsed() < IDLE_LIFETIME {
                return Ok(Admin {
                    client: idle.client,
                    info: idle.info,
                    pool,
                    permit,
                });
            }
        }
        let action = format!("connect to {} as `{}`", server.endpoint(), server.user);
        let config = config(
            server,
            &server.user,
            server.password.as_ref(),
            &server.database,
        );
        let client = open(&config, self.tls(server.sslmode)?)
            .await
            .map_err(|e| error::connect(&action, &e))?;
        let row = client
            .query_one(sql::SERVER_INFO, &[])
            .await
            .map_err(|e| error::statement("read the server's version", &e))?;
        let info = ServerInfo {
            version: column(&row, 0, "server_version_num")?,
            user: column(&row, 1, "current_user")?,
            superuser: column(&row, 2, "rolsuper")?,
        };
        tracing::debug!(
            server = %server.endpoint(),
            version = info.version,
            superuser = info.superuser,
            "opened a postgres admin connection"
        );
        Ok(Admin {
            client,
            info,
            pool,
            permit,
        })
    }

    /// Whether `password` is `role`'s password: checked against the stored verifier (CPU
    /// only, off the async threads) when there is one in a format [`verifier::matches`] knows,
    /// else by logging in as the role ([`Pools::can_log_in`]). No password at all is `false`.
    pub async fn password_works(
        &self,
        stored: StoredPassword,
        server: &Server,
        role: &str,
        password: &Sensitive,
        database: &str,
    ) -> Result<bool, ProviderError> {
        if let StoredPassword::Verifier(stored) = stored {
            let Some(stored) = stored else {
                return Ok(false);
            };
            let (owned_role, owned_password) = (role.to_owned(), password.clone());
            let verdict = tokio::task::spawn_blocking(move || {
                verifier::matches(stored.expose(), &owned_role, &owned_password)
            })
            .await
            .map_err(|e| {
                ProviderError::transient(format!("check the password of role `{role}`: {e}"))
            })?;
            match verdict {
                Some(ok) => {
                    if !ok {
                        tracing::debug!(
                            role,
                            "the recorded password does not match the role's verifier"
                        );
                    }
                    return Ok(ok);
                }
                None => tracing::debug!(
                    role,
                    "unknown password verifier format; logging in to check"
                ),
            }
        }
        self.can_log_in(server, role, password, database).await
    }

    /// Whether `role` logs in to `database` with `password`. Authentication failures (28P01,
    /// 28000) are `false`; errors PostgreSQL raises only after authenticating (no such
    /// database, no CONNECT, connection limit reached) are `true`; anything else is a transient
    /// error, since the password's state is unknown.
    pub async fn can_log_in(
        &self,
        server: &Server,
        role: &str,
        password: &Sensitive,
        database: &str,
    ) -> Result<bool, ProviderError> {
        let config = config(server, role, Some(password), database);
        match log_in_and_out(&config, self.tls(server.sslmode)?).await {
            Ok(()) => Ok(true),
            Err(e) if error::auth_failed(&e) => {
                tracing::debug!(role, "the recorded password was rejected");
                Ok(false)
            }
            Err(e) if error::after_authentication(&e) => Ok(true),
            Err(e) => Err(ProviderError::transient(format!(
                "log in as `{role}` to check its password: {}",
                error::describe(&e)
            ))),
        }
    }

    fn pool(&self, server: &Server) -> Arc<Pool> {
        let key = PoolKey {
            host: server.host.clone(),
            port: server.port,
            user: server.user.clone(),
            database: server.database.clone(),
            sslmode: server.sslmode,
        };
        let mut pools = self.pools.lock().unwrap_or_else(PoisonError::into_inner);
        pools
            .entry(key)
            .or_insert_with(|| {
                Arc::new(Pool {
                    permits: Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS)),
                    idle: Mutex::new(Vec::new()),
                    catalog: tokio::sync::Mutex::new(None),
                    writes: AtomicU64::new(0),
                })
            })
            .clone()
    }

    /// A refresh begins: catalogs read before now are not used again, and observations share
    /// one catalog read per server until [`Pools::end_refresh`].
    pub fn begin_refresh(&self) {
        self.refresh.fetch_add(1, Ordering::SeqCst);
        self.refreshing.fetch_add(1, Ordering::SeqCst);
    }

    pub fn end_refresh(&self) {
        // Saturating: an end without a begin changes nothing.
        let _ = self
            .refreshing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
    }

    /// Whether a refresh is under way (observations then read the shared catalog).
    pub fn refreshing(&self) -> bool {
        self.refreshing.load(Ordering::SeqCst) > 0
    }

    /// About to write to `server` (and done writing): its catalog read so far is stale.
    pub fn writing(&self, server: &Server) {
        self.pool(server).writes.fetch_add(1, Ordering::SeqCst);
    }

    /// The server's roles and databases, read once per refresh and shared by all its
    /// resources (issue 15 goal 1): one admin connection, two pipelined queries.
    pub async fn catalog(&self, server: &Server) -> Result<Arc<Catalog>, ProviderError> {
        let pool = self.pool(server);
        let mut slot = pool.catalog.lock().await;
        let refresh = self.refresh.load(Ordering::SeqCst);
        let writes = pool.writes.load(Ordering::SeqCst);
        if let Some(c) = slot.as_ref()
            && c.refresh == refresh
            && c.writes == writes
            && c.at.elapsed() < CATALOG_LIFETIME
        {
            return Ok(Arc::clone(&c.catalog));
        }
        let admin = self.admin(server).await?;
        let read = super::reconcile::read_catalog(&admin).await;
        admin.release();
        let catalog = Arc::new(read?);
        *slot = Some(CachedCatalog {
            refresh,
            writes,
            at: Instant::now(),
            catalog: Arc::clone(&catalog),
        });
        Ok(catalog)
    }

    /// The rustls connector for `prefer` / `require`, built once.
    fn tls(&self, mode: SslMode) -> Result<Option<MakeRustlsConnect>, ProviderError> {
        if mode == SslMode::Disable {
            return Ok(None);
        }
        match self.tls.get_or_init(crate::pg::encrypt_only_tls) {
            Ok(tls) => Ok(Some(tls.clone())),
            Err(e) => Err(ProviderError::permanent(e.clone())),
        }
    }
}

impl Pool {
    fn take_idle(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }
}

impl Admin {
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Give the connection back for reuse (if it is still open).
    pub fn release(self) {
        let Admin {
            client,
            info,
            pool,
            permit,
        } = self;
        if !client.is_closed() {
            pool.idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Idle {
                    client,
                    info,
                    since: Instant::now(),
                });
        }
        drop(permit);
    }

    /// Run one statement on its own (simple protocol, autocommit: never in a transaction
    /// block, as CREATE/DROP DATABASE require). The text is logged; it must carry no secret.
    pub async fn execute(&self, statement: &str) -> Result<(), tokio_postgres::Error> {
        tracing::debug!(statement, "postgres");
        self.client.batch_execute(statement).await
    }

    /// [`Admin::execute`] for a statement carrying a password verifier: not logged.
    pub async fn execute_sensitive(
        &self,
        statement: &Sensitive,
    ) -> Result<(), tokio_postgres::Error> {
        tracing::debug!(statement = "(carries a password verifier)", "postgres");
        self.client.batch_execute(statement.expose()).await
    }

    pub async fn query(&self, query: &str) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.client.query(query, &[]).await
    }

    /// At most one row of `query`, whose one parameter `$1` is text: one round trip (the
    /// parameter's type is given, so nothing is prepared first), and several of these polled
    /// together on one connection are pipelined.
    pub async fn query_opt(
        &self,
        query: &str,
        text: &str,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let rows = self
            .client
            .query_typed(query, &[(&text, Type::TEXT)])
            .await?;
        Ok(rows.into_iter().next())
    }
}

/// A typed column, as a provider error (not a panic) when the server answers unexpectedly.
pub fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    index: usize,
    name: &str,
) -> Result<T, ProviderError> {
    row.try_get(index).map_err(|e| {
        ProviderError::permanent(format!(
            "unexpected answer from the server for {name}: {}",
            error::describe(&e)
        ))
    })
}

fn config(server: &Server, user: &str, password: Option<&Sensitive>, database: &str) -> Config {
    let mut c = Config::new();
    c.host(&server.host)
        .port(server.port)
        .user(user)
        .dbname(database)
        .application_name(APPLICATION_NAME)
        .connect_timeout(CONNECT_TIMEOUT)
        .keepalives(true)
        .keepalives_idle(Duration::from_secs(60))
        .ssl_mode(match server.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require => tokio_postgres::config::SslMode::Require,
        });
    if let Some(p) = password {
        c.password(p.expose());
    }
    c
}

async fn open(
    config: &Config,
    tls: Option<MakeRustlsConnect>,
) -> Result<Client, tokio_postgres::Error> {
    match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            drive(connection);
            Ok(client)
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            drive(connection);
            Ok(client)
        }
    }
}

/// Connect, then close at once and wait until the session's Terminate went out, so the
/// check leaves no session behind on the tenant's database (a plain DROP DATABASE right after
/// would fail with 55006).
async fn log_in_and_out(
    config: &Config,
    tls: Option<MakeRustlsConnect>,
) -> Result<(), tokio_postgres::Error> {
    let closed = match tls {
        None => {
            let (client, connection) = config.connect(NoTls).await?;
            drop(client);
            connection.await
        }
        Some(tls) => {
            let (client, connection) = config.connect(tls).await?;
            drop(client);
            connection.await
        }
    };
    if let Err(e) = closed {
        tracing::debug!(error = %error::describe(&e), "closing a password check's session failed");
    }
    Ok(())
}

/// Run a connection's I/O in the background until its client is dropped.
fn drive<F>(connection: F)
where
    F: Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %error::describe(&e), "postgres connection ended");
        }
    });
}
