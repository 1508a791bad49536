//! The postgres provider against a real PostgreSQL server, reached through the PG* environment
//! (`scripts/test`, or `pg_virtualenv -t cargo test --test postgres_provider`; PGUSER must be a
//! superuser, as pg_virtualenv's is). Never mocked, never skipped: without PGHOST the tests
//! fail and say how to run them.
//!
//! Each test makes its own objects, named `<prefix>_<pid>_<counter>`, and drops them at the end;
//! a failed test leaves them behind in the throwaway cluster.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tend::address::{Address, Kind};
use tend::provider::postgres::PostgresProvider;
use tend::provider::{Applied, Desired, Drift, ErrorClass, Journal, Provider, ProviderError};
use tend::state::{Record, Status};
use tend::value::{Sensitive, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

// ---------------------------------------------------------------------------------------------
// The server under test

struct Pg {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    database: String,
}

fn pg() -> Pg {
    let host = std::env::var("PGHOST").unwrap_or_else(|_| {
        panic!(
            "PGHOST not set: run tests through scripts/test \
             (or `pg_virtualenv -t cargo test --test postgres_provider`)"
        )
    });
    let port = std::env::var("PGPORT")
        .ok()
        .map(|p| p.parse().expect("PGPORT is a port number"))
        .unwrap_or(5432);
    let user = std::env::var("PGUSER").expect("PGUSER not set: run tests through scripts/test");
    Pg {
        host,
        port,
        user,
        password: std::env::var("PGPASSWORD").ok(),
        database: std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".to_owned()),
    }
}

/// Connect as `user` to `database` on the test server (plain TCP or socket).
async fn connect_as(
    user: &str,
    password: Option<&str>,
    database: &str,
) -> Result<Client, tokio_postgres::Error> {
    let pg = pg();
    let mut config = tokio_postgres::Config::new();
    config
        .host(&pg.host)
        .port(pg.port)
        .user(user)
        .dbname(database)
        .connect_timeout(Duration::from_secs(10));
    if let Some(p) = password {
        config.password(p);
    }
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The test harness's own superuser connection (not the provider's).
async fn superuser() -> Client {
    let pg = pg();
    connect_as(&pg.user, pg.password.as_deref(), &pg.database)
        .await
        .expect("connect as the PG* superuser")
}

/// A name no other test (or earlier run in the same cluster) uses.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    )
}

/// The provider's admin connection: the PG* superuser, or `(user, password)`.
fn connection(admin: Option<(&str, &str)>, sslmode: &str) -> Value {
    let pg = pg();
    let (user, password) = match admin {
        Some((u, p)) => (u.to_owned(), Some(p.to_owned())),
        None => (pg.user.clone(), pg.password.clone()),
    };
    let mut m = tend::value::Fields::from_iter([
        ("host".to_owned(), Value::Str(pg.host.clone())),
        ("port".to_owned(), Value::Int(i64::from(pg.port))),
        ("user".to_owned(), Value::Str(user)),
        ("database".to_owned(), Value::Str(pg.database.clone())),
        ("sslmode".to_owned(), Value::Str(sslmode.to_owned())),
    ]);
    if let Some(p) = password {
        m.insert("password".to_owned(), Value::Secret(Sensitive::new(p)));
    }
    Value::Map(m)
}

/// A non-superuser admin like a managed server's (`CREATEDB CREATEROLE LOGIN`).
async fn create_admin(attributes: &str) -> (String, String) {
    let name = unique("adm");
    let password = format!("Adm1n-{}-pw", std::process::id());
    superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {name} {attributes} LOGIN PASSWORD '{password}'"
        ))
        .await
        .expect("create admin role");
    (name, password)
}

// ---------------------------------------------------------------------------------------------
// Desired state, records, journal

struct Tenant {
    database: String,
    owner: String,
}

fn tenant() -> Tenant {
    let base = unique("t");
    Tenant {
        database: format!("{base}_db"),
        owner: format!("{base}_user"),
    }
}

fn desired(t: &Tenant, connection: Value, overrides: &[(&str, Value)]) -> Desired {
    let mut spec = tend::value::Fields::from_iter([
        ("server".to_owned(), Value::Str("main".to_owned())),
        ("database".to_owned(), Value::Str(t.database.clone())),
        ("owner".to_owned(), Value::Str(t.owner.clone())),
        (
            "password".to_owned(),
            Value::Map(tend::value::Fields::from_iter([(
                "generate".to_owned(),
                Value::Map(tend::value::Fields::from_iter([(
                    "length".to_owned(),
                    Value::Int(32),
                )])),
            )])),
        ),
        ("rotation".to_owned(), Value::Int(0)),
        ("connection_limit".to_owned(), Value::Int(-1)),
        ("isolate".to_owned(), Value::Bool(true)),
        ("on_delete".to_owned(), Value::Str("drop".to_owned())),
    ]);
    for (k, v) in overrides {
        spec.insert((*k).to_owned(), v.clone());
    }
    Desired {
        address: Address::new(Kind::of("PostgresDatabase"), t.database.replace('_', "-")),
        spec: Value::Map(spec),
        connection,
        timeout: Duration::from_secs(120),
        prevent_destroy: false,
        adopt: false,
        depends_on: Vec::new(),
    }
}

/// What the executor would record after a successful apply.
fn record(desired: &Desired, applied: &Applied) -> Record {
    let mut r = Record::new(desired.address.clone(), 0);
    r.spec = desired.spec.clone();
    r.connection = desired.connection.clone();
    r.outputs = applied.outputs.clone();
    r.private = applied.private.clone();
    r.status = Status::Ready;
    r
}

/// Records `save_private` calls; optionally notes, at each call, whether a role already exists
/// on the server (to prove a secret is saved before the server sees it).
#[derive(Default)]
struct TestJournal {
    saved: Mutex<Vec<BTreeMap<String, Value>>>,
    watch_role: Option<String>,
    role_existed_at_save: Mutex<Vec<bool>>,
}

impl TestJournal {
    fn watching(role: &str) -> Self {
        TestJournal {
            watch_role: Some(role.to_owned()),
            ..Default::default()
        }
    }
    fn saves(&self) -> usize {
        self.saved.lock().expect("lock").len()
    }
}

#[async_trait]
impl Journal for TestJournal {
    async fn save_private(&self, private: BTreeMap<String, Value>) -> Result<(), ProviderError> {
        if let Some(role) = &self.watch_role {
            let exists = superuser()
                .await
                .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
                .await
                .expect("query pg_roles")
                .is_some();
            self.role_existed_at_save.lock().expect("lock").push(exists);
        }
        self.saved.lock().expect("lock").push(private);
        Ok(())
    }

    fn journaled(&self, key: &str) -> Option<Value> {
        self.saved
            .lock()
            .expect("lock")
            .iter()
            .rev()
            .find_map(|m| m.get(key).cloned())
    }
}

fn secret(map: &BTreeMap<String, Value>, key: &str) -> String {
    match map.get(key) {
        Some(Value::Secret(s)) => s.expose().to_owned(),
        other => panic!("{key} should be a secret, got {other:?}"),
    }
}

async fn apply(
    p: &PostgresProvider,
    j: &TestJournal,
    d: &Desired,
    recorded: Option<&Record>,
) -> Record {
    let applied = p
        .apply(j, d, recorded)
        .await
        .unwrap_or_else(|e| panic!("apply failed ({:?}): {}", e.class, e.message));
    record(d, &applied)
}

async fn drift(p: &PostgresProvider, d: &Desired, r: &Record) -> Vec<Drift> {
    let observed = p
        .observe(d, Some(r))
        .await
        .unwrap_or_else(|e| panic!("observe failed: {}", e.message))
        .expect("the tenant exists");
    d.address.kind.model().drift(d, Some(r), &observed)
}

fn fields(d: &[Drift]) -> Vec<&str> {
    d.iter().map(|d| d.field.as_str()).collect()
}

async fn destroy(p: &PostgresProvider, r: &Record) {
    p.destroy(r)
        .await
        .unwrap_or_else(|e| panic!("destroy failed: {}", e.message));
}

async fn role_exists(name: &str) -> bool {
    superuser()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&name])
        .await
        .expect("query")
        .is_some()
}

async fn database_exists(name: &str) -> bool {
    superuser()
        .await
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .expect("query")
        .is_some()
}

/// The catalog rows' versions (xmin) and the stored verifier: unchanged means no statement
/// touched the role or the database.
async fn catalog_versions(t: &Tenant) -> (String, String, String) {
    let c = superuser().await;
    let role = c
        .query_one(
            "SELECT xmin::text, rolpassword FROM pg_authid WHERE rolname = $1",
            &[&t.owner],
        )
        .await
        .expect("read pg_authid");
    let db = c
        .query_one(
            "SELECT xmin::text FROM pg_database WHERE datname = $1",
            &[&t.database],
        )
        .await
        .expect("read pg_database");
    (role.get(0), role.get(1), db.get(0))
}

async fn login_error(user: &str, password: &str, database: &str) -> Option<SqlState> {
    match connect_as(user, Some(password), database).await {
        Ok(_) => None,
        Err(e) => Some(e.code().cloned().unwrap_or(SqlState::CONNECTION_EXCEPTION)),
    }
}

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn observe_finds_nothing_before_the_first_apply() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    assert!(p.observe(&d, None).await.expect("observe").is_none());
}

#[tokio::test]
async fn the_password_is_saved_before_the_role_exists_and_a_second_apply_changes_nothing() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::watching(&t.owner);

    let r = apply(&p, &journal, &d, None).await;
    assert_eq!(journal.saves(), 1);
    assert_eq!(
        *journal.role_existed_at_save.lock().expect("lock"),
        [false],
        "the password must be in state before the role exists"
    );
    let saved = journal.saved.lock().expect("lock")[0].clone();
    assert_eq!(secret(&saved, "password"), secret(&r.private, "password"));
    assert_eq!(saved.get("rotation"), Some(&Value::Int(0)));
    assert_eq!(secret(&r.private, "password").len(), 32);
    assert_eq!(
        r.outputs.get("username"),
        Some(&Value::Str(t.owner.clone()))
    );
    assert_eq!(
        r.outputs.get("database"),
        Some(&Value::Str(t.database.clone()))
    );
    assert!(matches!(r.outputs.get("url"), Some(Value::Secret(_))));

    assert_eq!(drift(&p, &d, &r).await, Vec::<Drift>::new());

    let before = catalog_versions(&t).await;
    let again = apply(&p, &journal, &d, Some(&r)).await;
    assert_eq!(journal.saves(), 1, "no new password without a rotation");
    assert_eq!(
        catalog_versions(&t).await,
        before,
        "a converged tenant must not be touched (no ALTER, no re-salted verifier)"
    );
    assert_eq!(
        secret(&again.outputs, "password"),
        secret(&r.outputs, "password")
    );
    assert!(drift(&p, &d, &again).await.is_empty());

    destroy(&p, &again).await;
}

/// `prepare` journals the new password ahead of the action (before the role exists); the
/// apply then uses that one and journals nothing more. A resource whose password is recorded
/// has nothing to prepare.
#[tokio::test]
async fn a_prepared_password_is_the_one_the_apply_sets() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::watching(&t.owner);

    assert!(p.prepare(&journal, &d, None).await.expect("prepare"));
    assert_eq!(journal.saves(), 1);
    assert!(!role_exists(&t.owner).await, "prepare touches no server");
    let prepared = secret(&journal.saved.lock().expect("lock")[0], "password");

    let r = apply(&p, &journal, &d, None).await;
    assert_eq!(journal.saves(), 1, "the apply journaled nothing more");
    assert_eq!(secret(&r.private, "password"), prepared);
    assert!(
        connect_as(&t.owner, Some(&prepared), &t.database)
            .await
            .is_ok(),
        "the role logs in with the prepared password"
    );
    assert!(drift(&p, &d, &r).await.is_empty());
    assert!(
        !p.prepare(&journal, &d, Some(&r)).await.expect("prepare"),
        "nothing to prepare for a recorded password"
    );
    destroy(&p, &r).await;
}

/// A crash after `prepare` (the executor's look-ahead) leaves a generation-0 `applying` record
/// with a password the server never saw; the next process sets exactly that one.
#[tokio::test]
async fn a_password_prepared_before_a_crash_is_the_one_the_next_run_sets() {
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let before_crash = TestJournal::default();
    assert!(
        PostgresProvider::default()
            .prepare(&before_crash, &d, None)
            .await
            .expect("prepare")
    );
    let prepared = before_crash.saved.lock().expect("lock")[0].clone();
    let mut left = record(
        &d,
        &Applied {
            outputs: BTreeMap::new(),
            private: prepared.clone(),
        },
    );
    left.status = Status::Applying;
    assert_eq!(left.generation, 0);

    let journal = TestJournal::default();
    let r = apply(&PostgresProvider::default(), &journal, &d, Some(&left)).await;
    assert_eq!(journal.saves(), 0, "the recorded password is kept");
    let password = secret(&prepared, "password");
    assert_eq!(secret(&r.private, "password"), password);
    assert!(
        connect_as(&t.owner, Some(&password), &t.database)
            .await
            .is_ok(),
        "the role logs in with the password prepared before the crash"
    );
    destroy(&PostgresProvider::default(), &r).await;
}

/// A first apply creates without reading first; a role and a database that appeared since the
/// plan (wrong attributes, another owner, PUBLIC access, no password) are met as "already
/// exists" and converged like any found by a read.
#[tokio::test]
async fn a_first_apply_converges_a_role_and_database_made_since_the_plan() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let other = unique("other");
    let admin = superuser().await;
    for statement in [
        format!("CREATE ROLE {other}"),
        format!(
            "CREATE ROLE {} NOLOGIN CREATEDB CONNECTION LIMIT 3",
            t.owner
        ),
        format!("CREATE DATABASE {} OWNER {other}", t.database),
    ] {
        admin
            .batch_execute(&statement)
            .await
            .expect("make the tenant's objects by hand");
    }

    let journal = TestJournal::default();
    let r = apply(&p, &journal, &d, None).await;
    assert_eq!(journal.saves(), 1, "the new password was journaled");
    assert!(
        drift(&p, &d, &r).await.is_empty(),
        "attributes, owner, PUBLIC access and password converged"
    );
    let password = secret(&r.private, "password");
    let tenant = connect_as(&t.owner, Some(&password), &t.database)
        .await
        .expect("the role logs in with the recorded password");
    let owner: String = tenant
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .expect("read the owner")
        .get(0);
    assert_eq!(owner, t.owner);
    drop(tenant);

    destroy(&p, &r).await;
    superuser()
        .await
        .batch_execute(&format!("DROP ROLE {other}"))
        .await
        .expect("clean up");
}

#[tokio::test]
async fn the_generated_password_and_url_log_in_and_the_owner_can_create_tables() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let r = apply(&p, &TestJournal::default(), &d, None).await;

    let password = secret(&r.outputs, "password");
    let client = connect_as(&t.owner, Some(&password), &t.database)
        .await
        .expect("the generated password logs in");
    client
        .batch_execute("CREATE TABLE owned_by_tenant (id int)")
        .await
        .expect("the owner can create tables in public (INHERIT, pg_database_owner)");

    let url = secret(&r.outputs, "url");
    assert!(url.starts_with(&format!("postgres://{}:", t.owner)));
    let config: tokio_postgres::Config = url.parse().expect("the url parses");
    let (via_url, connection) = config.connect(NoTls).await.expect("the url connects");
    tokio::spawn(connection);
    let row = via_url
        .query_one("SELECT current_user::text, current_database()::text", &[])
        .await
        .expect("query");
    assert_eq!(row.get::<_, String>(0), t.owner);
    assert_eq!(row.get::<_, String>(1), t.database);
    drop((client, via_url));

    destroy(&p, &r).await;
}

#[tokio::test]
async fn tenants_cannot_connect_to_each_others_databases() {
    let p = PostgresProvider::default();
    let (a, b) = (tenant(), tenant());
    let da = desired(&a, connection(None, "prefer"), &[]);
    let db = desired(&b, connection(None, "prefer"), &[]);
    let ra = apply(&p, &TestJournal::default(), &da, None).await;
    let rb = apply(&p, &TestJournal::default(), &db, None).await;
    let pw_a = secret(&ra.outputs, "password");

    assert_eq!(login_error(&a.owner, &pw_a, &a.database).await, None);
    assert_eq!(
        login_error(&a.owner, &pw_a, &b.database).await,
        Some(SqlState::INSUFFICIENT_PRIVILEGE),
        "tenant A must not connect to tenant B's database"
    );
    let row = superuser()
        .await
        .query_one(
            "SELECT has_database_privilege('public', $1, 'CONNECT'), \
                    has_database_privilege('public', $1, 'TEMPORARY')",
            &[&b.database],
        )
        .await
        .expect("query");
    assert!(!row.get::<_, bool>(0), "PUBLIC has no CONNECT");
    assert!(!row.get::<_, bool>(1), "PUBLIC has no TEMPORARY");

    destroy(&p, &ra).await;
    destroy(&p, &rb).await;
}

#[tokio::test]
async fn a_role_dropped_by_hand_is_drift_and_apply_recreates_it_with_the_recorded_password() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::default();
    let r = apply(&p, &journal, &d, None).await;

    let su = superuser().await;
    su.batch_execute(&format!(
        "ALTER DATABASE {db} OWNER TO CURRENT_USER; DROP ROLE {role}",
        db = t.database,
        role = t.owner
    ))
    .await
    .expect("drop the role by hand");

    let found = drift(&p, &d, &r).await;
    assert_eq!(fields(&found), ["role", "owner"], "{found:?}");

    let r2 = apply(&p, &journal, &d, Some(&r)).await;
    assert_eq!(journal.saves(), 1, "the recorded password is reused");
    assert!(drift(&p, &d, &r2).await.is_empty());
    let password = secret(&r.private, "password");
    assert_eq!(login_error(&t.owner, &password, &t.database).await, None);

    destroy(&p, &r2).await;
}

#[tokio::test]
async fn an_owner_changed_by_hand_is_drift_and_apply_gives_the_database_back() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let r = apply(&p, &TestJournal::default(), &d, None).await;

    let intruder = unique("intruder");
    superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {intruder}; ALTER DATABASE {} OWNER TO {intruder}",
            t.database
        ))
        .await
        .expect("change the owner by hand");

    let found = drift(&p, &d, &r).await;
    assert_eq!(fields(&found), ["owner"]);
    assert_eq!(found[0].expected, t.owner);
    assert_eq!(found[0].found, intruder);

    let r2 = apply(&p, &TestJournal::default(), &d, Some(&r)).await;
    assert!(drift(&p, &d, &r2).await.is_empty());

    destroy(&p, &r2).await;
    superuser()
        .await
        .batch_execute(&format!("DROP ROLE {intruder}"))
        .await
        .expect("clean up");
}

#[tokio::test]
async fn a_password_changed_by_hand_is_drift_and_apply_sets_the_recorded_one_again() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::default();
    let r = apply(&p, &journal, &d, None).await;
    let password = secret(&r.private, "password");

    superuser()
        .await
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD 'changed-by-hand'",
            t.owner
        ))
        .await
        .expect("change the password by hand");

    let found = drift(&p, &d, &r).await;
    assert_eq!(fields(&found), ["password"]);
    assert!(!found[0].expected.contains(&password));
    assert!(!found[0].found.contains(&password));
    assert!(found[0].expected.contains("(sensitive)"));

    let r2 = apply(&p, &journal, &d, Some(&r)).await;
    assert_eq!(
        journal.saves(),
        1,
        "the recorded password is restored, not replaced"
    );
    assert!(drift(&p, &d, &r2).await.is_empty());
    assert_eq!(login_error(&t.owner, &password, &t.database).await, None);
    assert_eq!(
        login_error(&t.owner, "changed-by-hand", &t.database).await,
        Some(SqlState::INVALID_PASSWORD)
    );

    destroy(&p, &r2).await;
}

#[tokio::test]
async fn the_same_password_stored_again_by_hand_in_either_hash_is_not_drift() {
    // A superuser admin checks the recorded password against pg_authid's verifier instead of
    // logging in: a fresh SCRAM salt or an md5 hash of the same password still matches, and
    // a role without any password does not.
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::default();
    let r = apply(&p, &journal, &d, None).await;
    let password = secret(&r.private, "password");
    let admin = superuser().await;

    for encryption in ["scram-sha-256", "md5"] {
        admin
            .batch_execute(&format!(
                "SET password_encryption = '{encryption}'; ALTER ROLE {} PASSWORD '{password}'",
                t.owner
            ))
            .await
            .expect("store the password again by hand");
        let stored: String = admin
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&t.owner],
            )
            .await
            .expect("read the verifier")
            .get(0);
        let prefix = if encryption == "md5" {
            "md5"
        } else {
            "SCRAM-SHA-256$"
        };
        assert!(stored.starts_with(prefix), "{encryption}: stored as asked");
        assert!(drift(&p, &d, &r).await.is_empty(), "{encryption}: no drift");
    }

    admin
        .batch_execute(&format!("ALTER ROLE {} PASSWORD NULL", t.owner))
        .await
        .expect("remove the password by hand");
    assert_eq!(fields(&drift(&p, &d, &r).await), ["password"]);
    let r2 = apply(&p, &journal, &d, Some(&r)).await;
    assert!(drift(&p, &d, &r2).await.is_empty());
    assert_eq!(login_error(&t.owner, &password, &t.database).await, None);

    destroy(&p, &r2).await;
}

#[tokio::test]
async fn attribute_limit_and_public_access_drift_is_reported_and_repaired() {
    // NOLOGIN is reported as `role.login`, not as a password that no longer works.
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(
        &t,
        connection(None, "prefer"),
        &[("connection_limit", Value::Int(5))],
    );
    let r = apply(&p, &TestJournal::default(), &d, None).await;
    let limits = superuser()
        .await
        .query_one(
            "SELECT (SELECT rolconnlimit FROM pg_roles WHERE rolname = $1), \
                    (SELECT datconnlimit FROM pg_database WHERE datname = $2)",
            &[&t.owner, &t.database],
        )
        .await
        .expect("query");
    assert_eq!((limits.get::<_, i32>(0), limits.get::<_, i32>(1)), (5, 5));

    superuser()
        .await
        .batch_execute(&format!(
            "ALTER ROLE {role} NOLOGIN CREATEDB NOINHERIT CONNECTION LIMIT 3; \
             GRANT CONNECT ON DATABASE {db} TO PUBLIC; \
             ALTER DATABASE {db} CONNECTION LIMIT 7",
            role = t.owner,
            db = t.database
        ))
        .await
        .expect("drift by hand");

    let found = drift(&p, &d, &r).await;
    assert_eq!(
        fields(&found),
        [
            "role.login",
            "role.createdb",
            "role.inherit",
            "role.connection_limit",
            "public_access",
            "database.connection_limit"
        ],
        "{found:?}"
    );
    let r2 = apply(&p, &TestJournal::default(), &d, Some(&r)).await;
    assert!(drift(&p, &d, &r2).await.is_empty());

    destroy(&p, &r2).await;
}

#[tokio::test]
async fn a_rotation_bump_replaces_the_password_and_the_old_one_stops_working() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d0 = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::default();
    let r0 = apply(&p, &journal, &d0, None).await;
    let old = secret(&r0.private, "password");

    let d1 = desired(
        &t,
        connection(None, "prefer"),
        &[("rotation", Value::Int(1))],
    );
    let r1 = apply(&p, &journal, &d1, Some(&r0)).await;
    assert_eq!(
        journal.saves(),
        2,
        "the new password is saved before it is set"
    );
    let new = secret(&r1.private, "password");
    assert_ne!(old, new);
    assert_eq!(r1.private.get("rotation"), Some(&Value::Int(1)));
    assert_eq!(
        secret(&journal.saved.lock().expect("lock")[1], "password"),
        new
    );

    assert_eq!(
        login_error(&t.owner, &old, &t.database).await,
        Some(SqlState::INVALID_PASSWORD)
    );
    assert_eq!(login_error(&t.owner, &new, &t.database).await, None);
    assert!(drift(&p, &d1, &r1).await.is_empty());

    destroy(&p, &r1).await;
}

#[tokio::test]
async fn everything_works_as_a_non_superuser_admin() {
    let (admin, admin_pw) = create_admin("CREATEDB CREATEROLE").await;
    // Had the provider sent a plaintext password, the server would store it as MD5 for this
    // admin's sessions; a client-side verifier is stored as it is.
    superuser()
        .await
        .batch_execute(&format!(
            "ALTER ROLE {admin} SET password_encryption = 'md5'"
        ))
        .await
        .expect("set password_encryption");
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(Some((&admin, &admin_pw)), "prefer"), &[]);
    let journal = TestJournal::watching(&t.owner);

    let r = apply(&p, &journal, &d, None).await;
    assert_eq!(*journal.role_existed_at_save.lock().expect("lock"), [false]);
    let (_, verifier, _) = catalog_versions(&t).await;
    assert!(
        verifier.starts_with("SCRAM-SHA-256$4096:"),
        "the password reached the server as a SCRAM verifier"
    );
    assert!(drift(&p, &d, &r).await.is_empty());
    let before = catalog_versions(&t).await;
    let r = apply(&p, &journal, &d, Some(&r)).await;
    assert_eq!(
        catalog_versions(&t).await,
        before,
        "second apply is a no-op"
    );

    // A superuser hands the database to someone else; the admin must act as both roles.
    let intruder = unique("intruder");
    superuser()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {intruder}; ALTER DATABASE {} OWNER TO {intruder}",
            t.database
        ))
        .await
        .expect("change the owner by hand");
    assert_eq!(fields(&drift(&p, &d, &r).await), ["owner"]);
    let r = apply(&p, &journal, &d, Some(&r)).await;
    assert!(drift(&p, &d, &r).await.is_empty());

    // Password drift and rotation work without superuser too.
    superuser()
        .await
        .batch_execute(&format!("ALTER ROLE {} PASSWORD 'by-hand'", t.owner))
        .await
        .expect("change the password by hand");
    assert_eq!(fields(&drift(&p, &d, &r).await), ["password"]);
    let r = apply(&p, &journal, &d, Some(&r)).await;
    assert!(drift(&p, &d, &r).await.is_empty());

    // Drop while the tenant is connected.
    let password = secret(&r.private, "password");
    let session = connect_as(&t.owner, Some(&password), &t.database)
        .await
        .expect("tenant session");
    destroy(&p, &r).await;
    assert!(!database_exists(&t.database).await);
    assert!(!role_exists(&t.owner).await);
    assert!(session.simple_query("SELECT 1").await.is_err());

    superuser()
        .await
        .batch_execute(&format!("DROP ROLE {intruder}"))
        .await
        .expect("clean up");
}

#[tokio::test]
async fn destroy_with_retain_keeps_the_database_and_the_role() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(
        &t,
        connection(None, "prefer"),
        &[("on_delete", Value::Str("retain".to_owned()))],
    );
    let r = apply(&p, &TestJournal::default(), &d, None).await;
    destroy(&p, &r).await;
    assert!(database_exists(&t.database).await);
    assert!(role_exists(&t.owner).await);
    let password = secret(&r.private, "password");
    assert_eq!(login_error(&t.owner, &password, &t.database).await, None);

    // Clean up through a `drop` record.
    let dropping = desired(&t, connection(None, "prefer"), &[]);
    destroy(&p, &record(&dropping, &Applied::default())).await;
    assert!(!database_exists(&t.database).await);
}

#[tokio::test]
async fn destroy_with_drop_removes_both_while_a_tenant_is_connected_and_tolerates_repeats() {
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let r = apply(&p, &TestJournal::default(), &d, None).await;
    let password = secret(&r.private, "password");
    let session = connect_as(&t.owner, Some(&password), &t.database)
        .await
        .expect("tenant session");
    session
        .batch_execute("CREATE TABLE t (id int); CREATE TEMP TABLE tmp (id int)")
        .await
        .expect("tenant work");

    destroy(&p, &r).await;
    assert!(!database_exists(&t.database).await);
    assert!(!role_exists(&t.owner).await);
    assert!(
        session.simple_query("SELECT 1").await.is_err(),
        "the tenant session was ended"
    );

    destroy(&p, &r).await; // already gone: still Ok
    assert!(p.observe(&d, Some(&r)).await.expect("observe").is_none());
}

#[tokio::test]
async fn errors_carry_a_class_and_never_a_secret() {
    // An admin that may log in but not create roles: CREATE ROLE … PASSWORD fails with 42501.
    let (admin, admin_pw) = create_admin("").await;
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(Some((&admin, &admin_pw)), "prefer"), &[]);
    let journal = TestJournal::default();
    let err = p
        .apply(&journal, &d, None)
        .await
        .expect_err("a LOGIN-only admin cannot create roles");
    let password = secret(&journal.saved.lock().expect("lock")[0], "password");
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(err.message.contains("42501"), "{}", err.message);
    assert!(err.message.contains(&t.owner), "{}", err.message);
    for leak in [
        password.as_str(),
        admin_pw.as_str(),
        "SCRAM-SHA-256",
        "PASSWORD",
    ] {
        assert!(
            !err.message.contains(leak),
            "error leaks `{leak}`: {}",
            err.message
        );
    }
    assert!(!role_exists(&t.owner).await);

    // A wrong admin password: permanent, and the attempted password is not quoted. (A new
    // provider: the first one would reuse its pooled, already authenticated connection.)
    let wrong = "Wr0ng-admin-pw-123";
    let d = desired(&t, connection(Some((&admin, wrong)), "prefer"), &[]);
    let err = PostgresProvider::default()
        .apply(&TestJournal::default(), &d, None)
        .await
        .expect_err("wrong admin password");
    assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
    assert!(err.message.contains("28P01"), "{}", err.message);
    assert!(!err.message.contains(wrong));

    // Nobody listening: transient.
    let mut refused = connection(None, "disable");
    refused.insert("host", Value::Str("127.0.0.1".to_owned()));
    refused.insert("port", Value::Int(1));
    let d = desired(&t, refused, &[]);
    let err = p.observe(&d, None).await.expect_err("connection refused");
    assert_eq!(err.class, ErrorClass::Transient, "{}", err.message);

    // Invalid names: permanent, and nothing saved or sent.
    let journal = TestJournal::default();
    let bad = desired(
        &t,
        connection(None, "prefer"),
        &[("owner", Value::Str("pg_tenant".to_owned()))],
    );
    let err = p.apply(&journal, &bad, None).await.expect_err("reserved");
    assert_eq!(err.class, ErrorClass::Permanent);
    assert_eq!(journal.saves(), 0);
    let long = desired(
        &t,
        connection(None, "prefer"),
        &[("database", Value::Str("d".repeat(64)))],
    );
    assert_eq!(
        p.apply(&journal, &long, None)
            .await
            .expect_err("too long")
            .class,
        ErrorClass::Permanent
    );

    superuser()
        .await
        .batch_execute(&format!("DROP ROLE {admin}"))
        .await
        .expect("clean up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_applies_on_one_server_share_a_small_pool() {
    let (admin, admin_pw) = create_admin("CREATEDB CREATEROLE").await;
    let p = PostgresProvider::default();
    let tenants: Vec<Tenant> = (0..6).map(|_| tenant()).collect();
    let desired: Vec<Desired> = tenants
        .iter()
        .map(|t| desired(t, connection(Some((&admin, &admin_pw)), "prefer"), &[]))
        .collect();
    let journals: Vec<TestJournal> = tenants.iter().map(|_| TestJournal::default()).collect();
    let results = futures::future::join_all(
        desired
            .iter()
            .zip(&journals)
            .map(|(d, j)| p.apply(j, d, None)),
    )
    .await;
    let mut records = Vec::new();
    for (d, res) in desired.iter().zip(results) {
        let applied = res.unwrap_or_else(|e| panic!("parallel apply: {}", e.message));
        records.push(record(d, &applied));
    }
    let open: i64 = superuser()
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
            &[&admin],
        )
        .await
        .expect("query")
        .get(0);
    assert!(
        (1..=4).contains(&open),
        "admin connections are pooled (at most 4), found {open}"
    );
    for (d, r) in desired.iter().zip(&records) {
        assert!(drift(&p, d, r).await.is_empty());
        destroy(&p, r).await;
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_or_fails_clearly() {
    let ssl_on: String = superuser()
        .await
        .query_one("SHOW ssl", &[])
        .await
        .expect("show ssl")
        .get(0);
    let (admin, admin_pw) = create_admin("CREATEDB CREATEROLE").await;
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(Some((&admin, &admin_pw)), "require"), &[]);
    if ssl_on == "on" {
        let r = apply(&p, &TestJournal::default(), &d, None).await;
        assert!(secret(&r.outputs, "url").ends_with("?sslmode=require"));
        let encrypted: Vec<bool> = superuser()
            .await
            .query(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.usename = $1",
                &[&admin],
            )
            .await
            .expect("query")
            .iter()
            .map(|row| row.get(0))
            .collect();
        assert!(
            !encrypted.is_empty() && encrypted.iter().all(|e| *e),
            "admin connections use TLS: {encrypted:?}"
        );
        assert!(drift(&p, &d, &r).await.is_empty());
        destroy(&p, &r).await;
    } else {
        let err = p
            .apply(&TestJournal::default(), &d, None)
            .await
            .expect_err("the server has no TLS");
        assert_eq!(err.class, ErrorClass::Permanent, "{}", err.message);
        assert!(err.message.contains("TLS"), "{}", err.message);
    }
}

/// [`drift`] inside a refresh, as `tend plan` observes: one shared catalog read per server.
async fn drift_in_refresh(p: &PostgresProvider, d: &Desired, r: &Record) -> Vec<Drift> {
    p.begin_refresh();
    let found = drift(p, d, r).await;
    p.end_refresh();
    found
}

#[tokio::test]
async fn a_refresh_reads_the_catalog_once_and_still_finds_every_hand_made_change() {
    // Issue 15 goal 1: within a refresh the server's roles and databases come from one shared
    // catalog read, and a recorded password is confirmed by the verifier it left without
    // deriving SCRAM keys. Drift detection stays as strong as the per-resource reads.
    let p = PostgresProvider::default();
    let t = tenant();
    let d = desired(&t, connection(None, "prefer"), &[]);
    let journal = TestJournal::default();
    let r = apply(&p, &journal, &d, None).await;
    let password = secret(&r.private, "password");
    assert!(
        matches!(r.private.get("verifier_binding"), Some(Value::Secret(_))),
        "the apply records its verifier's binding: {:?}",
        r.private.keys().collect::<Vec<_>>()
    );
    assert!(drift_in_refresh(&p, &d, &r).await.is_empty());

    // A password set by hand leaves another verifier: found.
    let admin = superuser().await;
    admin
        .batch_execute(&format!(
            "ALTER ROLE {} PASSWORD 'changed-by-hand'",
            t.owner
        ))
        .await
        .expect("change the password by hand");
    assert_eq!(fields(&drift_in_refresh(&p, &d, &r).await), ["password"]);

    // The same password stored again by hand: a new salt, checked in full, no drift.
    admin
        .batch_execute(&format!("ALTER ROLE {} PASSWORD '{password}'", t.owner))
        .await
        .expect("store the password again");
    assert!(drift_in_refresh(&p, &d, &r).await.is_empty());

    // Within one refresh the catalog is read once: a change after it is seen by the next one.
    p.begin_refresh();
    assert!(drift(&p, &d, &r).await.is_empty());
    admin
        .batch_execute(&format!("ALTER DATABASE {} CONNECTION LIMIT 3", t.database))
        .await
        .expect("change the limit by hand");
    assert!(
        drift(&p, &d, &r).await.is_empty(),
        "the same refresh answers from its catalog read"
    );
    p.end_refresh();
    assert_eq!(
        fields(&drift_in_refresh(&p, &d, &r).await),
        ["database.connection_limit"]
    );

    // An apply invalidates what a refresh under way read of its server.
    p.begin_refresh();
    let _ = drift(&p, &d, &r).await;
    let r2 = apply(&p, &journal, &d, Some(&r)).await;
    assert!(
        drift(&p, &d, &r2).await.is_empty(),
        "read again after the write"
    );
    p.end_refresh();

    // A binding left from another password (a crash between saving a rotated password and
    // setting it) never vouches for the new one.
    let mut stale = r2.clone();
    stale.private.insert(
        "password".into(),
        Value::Secret(Sensitive::new("a-newer-password".to_owned())),
    );
    assert_eq!(
        fields(&drift_in_refresh(&p, &d, &stale).await),
        ["password"]
    );

    destroy(&p, &r2).await;
}
