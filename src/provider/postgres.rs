//! The postgres provider: converges a `PostgresDatabase` — one database plus the LOGIN role that
//! owns it — on a PostgreSQL server, following reference/postgres.md (DESIGN §5).
//!
//! Code map: `spec` reads and validates the inputs (pure); `observed` models what a server
//! holds and computes drift (pure); `sql` builds statement text (pure); `error` classes
//! tokio-postgres errors (pure); `conn` pools admin connections, sets up TLS and tries tenant
//! log-ins; `reconcile` runs the statement sequence. This file wires them into [`Provider`] and
//! owns the password's life: generated from OS randomness, saved through the [`Journal`] before
//! any server sees it (invariant 1), sent only as a SCRAM-SHA-256 verifier.
//!
//! Must not touch: the state store (only through the `Journal`), manifests, or any server
//! object other than the spec's database and role. Must not put a secret into a log line, an
//! error, or an [`Observed`] / [`Drift`] value.

mod conn;

pub use conn::QUIET_LOG_TARGETS;
mod error;
pub mod model;
mod observed;
mod reconcile;
mod spec;
mod sql;
mod verifier;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::provider::{Applied, Desired, Journal, Observed, Provider, ProviderError};
use crate::state::Record;
use crate::value::{Sensitive, Value};

use conn::StoredPassword;
use observed::TenantState;
use spec::{Server, SslMode, Tenant};

/// Keys of the provider's private data in state.
const PRIVATE_PASSWORD: &str = "password";
const PRIVATE_ROTATION: &str = "rotation";
/// The OID of the database tend created, adopted or imported (see `reconcile::teardown`).
const PRIVATE_DATABASE_OID: &str = "database_oid";
/// HMAC-SHA-256 keyed with the password over the verifier the role held after the last apply:
/// a refresh that finds that very verifier knows the password without deriving SCRAM keys,
/// and a binding left from an older password (a crash between saving a new one and setting
/// it) never matches.
const PRIVATE_VERIFIER_BINDING: &str = "verifier_binding";

/// Characters a URL's userinfo, host or path segment may carry as they are (RFC 3986
/// unreserved); everything else is percent-encoded.
const URL_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Converges `PostgresDatabase` resources. Holds the admin connection pools, shared by every
/// resource on the same server.
#[derive(Default)]
pub struct PostgresProvider {
    pools: conn::Pools,
    spares: Spares,
    /// Verifiers of the passwords [`Provider::prepare`] journaled, by address, until the
    /// apply takes them (in memory only; an apply that finds none derives one).
    prepared: Mutex<HashMap<String, (Sensitive, Sensitive)>>,
}

#[async_trait]
impl Provider for PostgresProvider {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn observe(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Option<Observed>, ProviderError> {
        // A server that is itself not created yet holds nothing of ours.
        if !desired.spec.is_known() || !desired.connection.is_known() {
            return Ok(None);
        }
        let tenant = Tenant::from_value(&desired.spec)?;
        let server = Server::from_value(&desired.connection)?;
        spec::check_pair(&tenant, &server)?;

        let (role, database, stored) = if self.pools.refreshing() {
            // During a refresh: one catalog read per server, shared by all its resources.
            let catalog = self.pools.catalog(&server).await?;
            let role = catalog.role(&tenant.owner);
            let database = catalog.database(&tenant.database);
            let stored = role.map(|_| catalog.password(&tenant.owner));
            (role, database, stored)
        } else {
            // A lone observation (an apply's second look after a conflict): just this one.
            let admin = self.pools.admin(&server).await?;
            let read = async {
                let role = reconcile::read_role(&admin, &tenant.owner).await?;
                let database = reconcile::read_database(&admin, &tenant.database).await?;
                let stored = match role {
                    Some(_) => Some(reconcile::read_password(&admin, &tenant.owner).await?),
                    None => None,
                };
                Ok::<_, ProviderError>((role, database, stored))
            }
            .await;
            admin.release();
            read?
        };

        let mut state = TenantState {
            role,
            database,
            password_ok: None,
        };
        if state.is_absent() {
            return Ok(None);
        }
        // A role without LOGIN cannot prove its password; its LOGIN drift is reported instead.
        let password = recorded
            .and_then(recorded_password)
            .filter(|_| state.role.is_some_and(|r| r.login));
        if let (Some(password), Some(stored)) = (password, stored) {
            // The verifier tend set (or found working) at the last apply is still there: the
            // password is unchanged, no key derivation needed. Anything else, a hand-set
            // password included, is checked in full below.
            if let StoredPassword::Verifier(Some(v)) = &stored
                && let (Some(found), Some(kept)) =
                    (binding(&password, v), recorded.and_then(recorded_binding))
                && found.expose() == kept.expose()
            {
                state.password_ok = Some(true);
                return Ok(Some(state.to_observed()));
            }
            let login_db = if state.database.is_some() {
                &tenant.database
            } else {
                &server.database
            };
            let ok = self
                .pools
                .password_works(stored, &server, &tenant.owner, &password, login_db)
                .await?;
            state.password_ok = Some(ok);
        }
        Ok(Some(state.to_observed()))
    }

    async fn apply(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Applied, ProviderError> {
        let tenant = Tenant::from_value(&desired.spec)?;
        let server = Server::from_value(&desired.connection)?;
        spec::check_pair(&tenant, &server)?;

        // Nothing of this tenant was ever sent to the server by tend (no earlier attempt left a
        // password behind) and it is no adoption (which expects them to exist): its role and
        // database are created without being read first, one round trip less per new
        // database; one that appeared since the plan is met as "already exists" and converged
        // like any other.
        let first = !desired.adopt
            && recorded.is_none_or(|r| r.generation == 0 && recorded_password(r).is_none());
        let (password, made) = self
            .password(journal, &desired.address.to_string(), &tenant, recorded)
            .await?;
        let fresh = made.is_some();

        let admin = self.pools.admin(&server).await?;
        self.pools.writing(&server);
        let result = reconcile::converge(
            &self.pools,
            &admin,
            &server,
            &tenant,
            &password,
            made,
            reconcile::Start { fresh, first },
        )
        .await;
        self.pools.writing(&server);
        admin.release();
        let reconcile::Converged {
            verifier: in_place,
            oid,
        } = result?;

        let mut private = BTreeMap::from([
            (PRIVATE_PASSWORD.to_owned(), Value::Secret(password.clone())),
            (PRIVATE_ROTATION.to_owned(), Value::Int(tenant.rotation)),
        ]);
        if let Some(b) = in_place.and_then(|v| binding(&password, &v)) {
            private.insert(PRIVATE_VERIFIER_BINDING.to_owned(), Value::Secret(b));
        }
        if let Some(oid) = oid {
            private.insert(PRIVATE_DATABASE_OID.to_owned(), Value::Int(oid));
        }
        Ok(Applied {
            outputs: outputs(&tenant, &server, &password),
            private,
        })
    }

    /// A new password (first create, rotation) is made and journaled ahead of the action.
    async fn prepare(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<bool, ProviderError> {
        let tenant = Tenant::from_value(&desired.spec)?;
        if kept_password(&tenant, recorded).is_some() {
            return Ok(false);
        }
        let made = self.new_password(journal, &tenant).await?;
        self.prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(desired.address.to_string(), made);
        Ok(true)
    }

    fn begin_refresh(&self) {
        self.pools.begin_refresh();
    }

    /// `tend import`: the database's OID, so a later `on_delete: drop` knows it is this one.
    async fn import(&self, desired: &Desired) -> Result<BTreeMap<String, Value>, ProviderError> {
        let tenant = Tenant::from_value(&desired.spec)?;
        let server = Server::from_value(&desired.connection)?;
        let admin = self.pools.admin(&server).await?;
        let oid = reconcile::database_oid(&admin, &tenant.database).await;
        admin.release();
        Ok(oid?
            .map(|o| BTreeMap::from([(PRIVATE_DATABASE_OID.to_owned(), Value::Int(o))]))
            .unwrap_or_default())
    }

    fn end_refresh(&self) {
        self.pools.end_refresh();
    }

    async fn destroy(&self, recorded: &Record) -> Result<(), ProviderError> {
        let tenant = Tenant::from_value(&recorded.spec)?;
        if tenant.on_delete == spec::OnDelete::Retain {
            tracing::info!(
                address = %recorded.address,
                database = %tenant.database,
                role = %tenant.owner,
                "on_delete: retain; keeping the database and the role"
            );
            return Ok(());
        }
        let server = Server::from_value(&recorded.connection)?;
        spec::check_pair(&tenant, &server)?;
        let admin = self.pools.admin(&server).await?;
        self.pools.writing(&server);
        let known = recorded
            .private
            .get(PRIVATE_DATABASE_OID)
            .and_then(Value::as_i64);
        let result = reconcile::teardown(&admin, &tenant, known).await;
        self.pools.writing(&server);
        admin.release();
        result
    }
}

impl PostgresProvider {
    /// The tenant's password: the recorded one while the rotation number is unchanged, else the
    /// one [`Provider::prepare`] journaled for this action, else a new one, saved through the
    /// journal before this returns (so before any server sees it). A new one comes with its
    /// verifier (`Some`), made ahead by [`Spares`].
    async fn password(
        &self,
        journal: &dyn Journal,
        address: &str,
        tenant: &Tenant,
        recorded: Option<&Record>,
    ) -> Result<(Sensitive, Option<Sensitive>), ProviderError> {
        if let Some(password) = kept_password(tenant, recorded) {
            return Ok((password, None));
        }
        // Made and journaled by `prepare` for this action.
        let prepared = self
            .prepared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(address);
        if let (Some(password), Some(Value::Int(rotation))) = (
            journal
                .journaled(PRIVATE_PASSWORD)
                .as_ref()
                .and_then(secret_of),
            journal.journaled(PRIVATE_ROTATION),
        ) && rotation == tenant.rotation
        {
            let verifier = match prepared {
                Some((p, v)) if p.expose() == password.expose() => v,
                _ => reconcile::new_verifier(&password),
            };
            return Ok((password, Some(verifier)));
        }
        let (password, verifier) = self.new_password(journal, tenant).await?;
        Ok((password, Some(verifier)))
    }

    /// A new password and its verifier, journaled (flushed) before anything else sees it.
    async fn new_password(
        &self,
        journal: &dyn Journal,
        tenant: &Tenant,
    ) -> Result<(Sensitive, Sensitive), ProviderError> {
        let (password, verifier) = self.spares.take(tenant.password_length)?;
        journal
            .save_private(BTreeMap::from([
                (PRIVATE_PASSWORD.to_owned(), Value::Secret(password.clone())),
                (PRIVATE_ROTATION.to_owned(), Value::Int(tenant.rotation)),
            ]))
            .await?;
        tracing::debug!(role = %tenant.owner, rotation = tenant.rotation, "generated and saved a new password");
        Ok((password, verifier))
    }
}

/// New passwords made ahead of need, each with its SCRAM verifier, so that the 4,096 PBKDF2
/// rounds of the next new role run (on a blocking thread) while this one's statements wait on
/// the server, not between them. At most [`SPARES`] per password length are kept or in the
/// making; they live in memory only, and one is never handed out twice. A password reaches
/// state (through the journal) only when it is taken, before any server sees its verifier.
#[derive(Default)]
struct Spares(Arc<Mutex<HashMap<usize, SpareSet>>>);

#[derive(Default)]
struct SpareSet {
    ready: Vec<(Sensitive, Sensitive)>,
    making: usize,
}

/// Spares kept per password length: enough for the provider's per-server concurrency.
const SPARES: usize = conn::MAX_ADMIN_CONNECTIONS;

impl Spares {
    /// A new password of `length` characters and its verifier: a spare if one is ready, else
    /// made now. Either way another spare is started.
    fn take(&self, length: usize) -> Result<(Sensitive, Sensitive), ProviderError> {
        let spare = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(&length)
            .and_then(|s| s.ready.pop());
        self.refill(length);
        match spare {
            Some(made) => Ok(made),
            None => new_password(length),
        }
    }

    fn refill(&self, length: usize) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut sets = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            let set = sets.entry(length).or_default();
            if set.ready.len() + set.making >= SPARES {
                return;
            }
            set.making += 1;
        }
        let sets = Arc::clone(&self.0);
        runtime.spawn_blocking(move || {
            let made = new_password(length);
            let mut sets = sets.lock().unwrap_or_else(PoisonError::into_inner);
            let set = sets.entry(length).or_default();
            set.making = set.making.saturating_sub(1);
            if let Ok(made) = made {
                set.ready.push(made);
            }
        });
    }
}

/// A new password and its SCRAM-SHA-256 verifier.
fn new_password(length: usize) -> Result<(Sensitive, Sensitive), ProviderError> {
    let password = generate_password(length)?;
    let verifier = reconcile::new_verifier(&password);
    Ok((password, verifier))
}

/// See [`PRIVATE_VERIFIER_BINDING`]: hex of HMAC-SHA-256(password, verifier).
fn binding(password: &Sensitive, verifier: &Sensitive) -> Option<Sensitive> {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(password.expose().as_bytes()).ok()?;
    mac.update(verifier.expose().as_bytes());
    Some(Sensitive::new(hex::encode(mac.finalize().into_bytes())))
}

fn recorded_binding(record: &Record) -> Option<Sensitive> {
    match record.private.get(PRIVATE_VERIFIER_BINDING)? {
        Value::Secret(s) => Some(s.clone()),
        _ => None,
    }
}

/// The recorded password when it is the one for the tenant's `rotation` (so `apply` keeps it
/// rather than generating and journaling a new one).
fn kept_password(tenant: &Tenant, recorded: Option<&Record>) -> Option<Sensitive> {
    let record = recorded?;
    let rotation = record
        .private
        .get(PRIVATE_ROTATION)
        .and_then(Value::as_i64)?;
    (rotation == tenant.rotation)
        .then(|| recorded_password(record))
        .flatten()
}

fn recorded_password(record: &Record) -> Option<Sensitive> {
    secret_of(record.private.get(PRIVATE_PASSWORD)?)
}

fn secret_of(value: &Value) -> Option<Sensitive> {
    match value {
        Value::Secret(s) => Some(s.clone()),
        Value::Str(s) => Some(Sensitive::new(s.clone())),
        _ => None,
    }
}

/// A password of `length` characters from `[A-Za-z0-9]`, drawn from the OS's randomness
/// (rejection sampling, so every character is equally likely).
fn generate_password(length: usize) -> Result<Sensitive, ProviderError> {
    const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // 248 = 4 * 62: bytes at or above it would favour the first characters.
    const LIMIT: u8 = 248;
    let mut password = String::with_capacity(length);
    let mut buf = zeroize::Zeroizing::new([0u8; 64]);
    while password.len() < length {
        OsRng.try_fill_bytes(buf.as_mut()).map_err(|e| {
            ProviderError::transient(format!("cannot read randomness from the OS: {e}"))
        })?;
        for &b in buf.iter().filter(|b| **b < LIMIT) {
            if password.len() == length {
                break;
            }
            password.push(char::from(ALPHABET[usize::from(b % 62)]));
        }
    }
    Ok(Sensitive::new(password))
}

/// The outputs other resources read: where to connect and as whom.
fn outputs(tenant: &Tenant, server: &Server, password: &Sensitive) -> BTreeMap<String, Value> {
    BTreeMap::from([
        ("host".to_owned(), Value::Str(server.host.clone())),
        ("port".to_owned(), Value::Int(i64::from(server.port))),
        ("database".to_owned(), Value::Str(tenant.database.clone())),
        ("username".to_owned(), Value::Str(tenant.owner.clone())),
        ("password".to_owned(), Value::Secret(password.clone())),
        (
            "url".to_owned(),
            Value::Secret(connection_url(tenant, server, password)),
        ),
    ])
}

/// `postgres://user:password@host:port/database`, each part percent-encoded, with
/// `?sslmode=require` when the server requires TLS.
fn connection_url(tenant: &Tenant, server: &Server, password: &Sensitive) -> Sensitive {
    let enc = |s: &str| utf8_percent_encode(s, URL_COMPONENT).to_string();
    let host = if server.host.starts_with('/') {
        // A Unix socket directory: libpq accepts it percent-encoded in the host part.
        enc(&server.host)
    } else {
        spec::url_host(&server.host)
    };
    let mut url = format!(
        "postgres://{}:{}@{}:{}/{}",
        enc(&tenant.owner),
        enc(password.expose()),
        host,
        server.port,
        enc(&tenant.database)
    );
    if server.sslmode == SslMode::Require {
        url.push_str("?sslmode=require");
    }
    Sensitive::new(url)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::KindModel;
    use std::time::Duration;

    fn s(v: &str) -> Value {
        Value::Str(v.to_owned())
    }

    fn desired(spec: &[(&str, Value)], conn: &[(&str, Value)]) -> Desired {
        let map = |pairs: &[(&str, Value)]| {
            Value::Map(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
            )
        };
        Desired {
            address: "PostgresDatabase.org-1".parse().expect("address"),
            spec: map(spec),
            connection: map(conn),
            timeout: Duration::from_secs(120),
            prevent_destroy: false,
            adopt: false,
            depends_on: Vec::new(),
        }
    }

    fn sample() -> Desired {
        desired(
            &[
                ("server", s("main")),
                ("database", s("app_org_1")),
                ("owner", s("app_user_1")),
            ],
            &[
                ("host", s("db.internal")),
                ("port", Value::Int(25060)),
                ("user", s("doadmin")),
                ("password", Value::Secret(Sensitive::new("admin-secret"))),
                ("sslmode", s("require")),
            ],
        )
    }

    #[test]
    fn generated_passwords_have_the_length_and_alphabet_asked_for() {
        for length in [8, 32, 200] {
            let p = generate_password(length).expect("os randomness");
            assert_eq!(p.expose().len(), length);
            assert!(p.expose().bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let a = generate_password(32).expect("os randomness");
        let b = generate_password(32).expect("os randomness");
        assert_ne!(a.expose(), b.expose());
    }

    #[test]
    fn url_percent_encodes_user_password_and_database() {
        let d = sample();
        let tenant = Tenant::from_value(&d.spec).expect("valid");
        let mut tenant_odd = tenant.clone();
        tenant_odd.owner = "we ird@user".into();
        tenant_odd.database = "db/1".into();
        let server = Server::from_value(&d.connection).expect("valid");
        let url = connection_url(&tenant_odd, &server, &Sensitive::new("p@ss:w/rd%"));
        assert_eq!(
            url.expose(),
            "postgres://we%20ird%40user:p%40ss%3Aw%2Frd%25@db.internal:25060/db%2F1?sslmode=require"
        );
        let out = outputs(&tenant, &server, &Sensitive::new("pw"));
        assert!(matches!(out.get("password"), Some(Value::Secret(_))));
        assert!(matches!(out.get("url"), Some(Value::Secret(_))));
        assert_eq!(out.get("username"), Some(&s("app_user_1")));
    }

    #[test]
    fn known_outputs_and_concurrency_come_from_spec_and_connection() {
        let p = model::PostgresDatabase;
        let d = sample();
        let known = p.known_outputs(&d);
        assert_eq!(known.get("host"), Some(&s("db.internal")));
        assert_eq!(known.get("port"), Some(&Value::Int(25060)));
        assert_eq!(known.get("database"), Some(&s("app_org_1")));
        assert_eq!(known.get("username"), Some(&s("app_user_1")));
        assert!(!known.contains_key("password"));
        assert_eq!(
            p.concurrency(&d.connection),
            ("postgres://db.internal:25060".to_owned(), 4)
        );
        assert_eq!(p.immutable_fields(), ["server", "database", "owner"]);
    }

    #[test]
    fn a_converged_observation_has_no_drift() {
        let d = sample();
        let o = model::PostgresDatabase::converged(&d).expect("valid spec");
        assert!(model::PostgresDatabase.drift(&d, None, &o).is_empty());
    }

    #[test]
    fn powerful_roles_and_the_admins_own_are_never_adopted() {
        let found = |role: observed::RoleState| {
            TenantState {
                role: Some(role),
                database: None,
                password_ok: None,
            }
            .to_observed()
        };
        let m = model::PostgresDatabase;
        let d = sample();
        let plain = observed::RoleState::desired(-1);
        assert_eq!(m.refuse_adoption(&d, &found(plain)), None);
        let replication = observed::RoleState {
            replication: true,
            bypassrls: true,
            ..plain
        };
        let why = m.refuse_adoption(&d, &found(replication)).expect("refused");
        assert!(why.contains("REPLICATION, BYPASSRLS"), "{why}");
        // The admin tend connects as owns the database: never taken over.
        let mut admins = sample();
        admins.spec.insert("owner", s("doadmin"));
        let why = m.refuse_adoption(&admins, &found(plain)).expect("refused");
        assert!(why.contains("the admin role tend connects as"), "{why}");
    }

    #[test]
    fn drift_goes_through_the_observed_fields() {
        let p = model::PostgresDatabase;
        let d = sample();
        let observed = TenantState {
            role: Some(observed::RoleState::desired(-1)),
            database: None,
            password_ok: Some(false),
        }
        .to_observed();
        let drift = p.drift(&d, None, &observed);
        let fields: Vec<_> = drift.iter().map(|d| d.field.as_str()).collect();
        assert_eq!(fields, ["database", "password"]);
        assert!(
            drift
                .iter()
                .all(|d| !format!("{d:?}").contains("admin-secret"))
        );
    }
}
