//! The real binary against a real PostgreSQL (started by scripts/test): convergence,
//! idempotence, drift repair, isolation, secrets, destroy semantics, failure isolation and
//! crash safety.

use std::time::Duration;

use tend::address::Address;
use tend::state::{SledStore, StateStore, Status};
use tend_test_support::{
    Workspace, assert_has, database_yaml, exists, owner_of, pg, server_yaml, unique,
};

/// The generated password of a database resource, read from state with the library.
fn password_in_state(w: &Workspace, name: &str) -> String {
    let store = SledStore::open(&w.state).expect("open state");
    let addr: Address = format!("PostgresDatabase.{name}").parse().expect("address");
    let rec = store.get(&addr).expect("read").expect("recorded");
    rec.private
        .get("password")
        .and_then(|v| v.as_str())
        .expect("password in state")
        .to_owned()
}

#[tokio::test]
async fn apply_converges_and_a_second_plan_has_no_changes() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  connection_limit: 5\n"),
    );
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(
        r.stdout
            .contains("PostgresDatabase.a: Creation complete after"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 1 added, 0 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    assert!(exists("role", &role).await && exists("db", &db).await);
    assert_eq!(owner_of(&db).await, role);

    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(!r.stdout.contains("Creating"), "{}", r.stdout);

    // The generated password works for the tenant role on its own database.
    let pw = password_in_state(&w, "a");
    assert_eq!(pw.len(), 32);
    pg().connect_as(&role, &pw, &db)
        .await
        .expect("tenant login");

    let r = w.run(&["state", "list"]).ok();
    assert!(
        r.stdout.contains("PostgresDatabase.a") && r.stdout.contains("ready"),
        "{}",
        r.stdout
    );
    let r = w.run(&["runs", "list"]).ok();
    assert_eq!(
        r.stdout.lines().count(),
        1,
        "one run recorded: {}",
        r.stdout
    );
}

#[tokio::test]
async fn drift_is_planned_and_repaired() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();
    let admin = pg().admin().await;

    // Owner changed by hand.
    let intruder = unique("tend_intruder_");
    admin
        .batch_execute(&format!(
            "CREATE ROLE {intruder}; ALTER DATABASE {db} OWNER TO {intruder}"
        ))
        .await
        .expect("drift owner");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("owner (drift)"), "{}", r.stdout);
    // Without refresh, tend trusts state and sees nothing.
    let r = w.run(&["plan", "--refresh=false", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    w.run(&["apply", "--auto-approve"]).ok();
    assert_eq!(owner_of(&db).await, role);

    // Password changed by hand.
    admin
        .batch_execute(&format!("ALTER ROLE {role} PASSWORD 'changed-by-hand'"))
        .await
        .expect("drift password");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(r.stdout.contains("password"), "{}", r.stdout);
    w.run(&["apply", "--auto-approve"]).ok();
    pg().connect_as(&role, &password_in_state(&w, "a"), &db)
        .await
        .expect("password repaired");

    // Database and role dropped by hand.
    admin
        .batch_execute(&format!("DROP DATABASE {db}"))
        .await
        .expect("drop database by hand");
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .expect("drop role by hand");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    w.run(&["apply", "--auto-approve"]).ok();
    assert!(exists("role", &role).await && exists("db", &db).await);
    pg().connect_as(&role, &password_in_state(&w, "a"), &db)
        .await
        .expect("recreated with the recorded password");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[tokio::test]
async fn tenants_are_isolated_from_each_other() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db_a, role_a, db_b, role_b) = (
        unique("tend_db_"),
        unique("tend_user_"),
        unique("tend_db_"),
        unique("tend_user_"),
    );
    w.write("server.yaml", &server_yaml());
    w.write(
        "db.yaml",
        &[
            database_yaml("a", &db_a, &role_a, ""),
            database_yaml("b", &db_b, &role_b, ""),
        ]
        .concat(),
    );
    w.run(&["apply", "--auto-approve"]).ok();
    let pw_a = password_in_state(&w, "a");
    pg().connect_as(&role_a, &pw_a, &db_a)
        .await
        .expect("a reaches its own database");
    let err = pg()
        .connect_as(&role_a, &pw_a, &db_b)
        .await
        .expect_err("a must not reach b");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
        "{err}"
    );
    let admin = pg().admin().await;
    for db in [&db_a, &db_b] {
        let public: bool = admin
            .query_one(
                "SELECT has_database_privilege('public', $1, 'CONNECT')",
                &[db],
            )
            .await
            .expect("acl")
            .get(0);
        assert!(!public, "PUBLIC has CONNECT on {db}");
    }
}

#[tokio::test]
async fn secrets_never_reach_output_logs_run_records_or_state_bytes() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    let mut seen = String::new();
    let trace = |args: &[&str]| {
        let out = w.cmd(args).env("RUST_LOG", "trace").output().expect("run");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    seen += &trace(&["apply", "--auto-approve"]);
    seen += &trace(&["plan"]);
    seen += &trace(&["state", "show", "PostgresDatabase.a"]);
    seen += &trace(&["state", "export"]);
    seen += &trace(&["state", "export", "--include-secrets"]);
    seen += &trace(&["runs", "list"]);
    let run_id = w.run(&["runs", "list"]).first_word();
    seen += &trace(&["runs", "show", &run_id]);
    let generated = password_in_state(&w, "a");
    let admin_pw = pg().password;
    assert!(
        seen.contains("PostgresDatabase.a"),
        "the commands ran: {seen}"
    );
    assert!(seen.contains("(sensitive)"), "secrets are shown masked");
    for secret in [&generated, &admin_pw] {
        assert!(
            !seen.contains(secret.as_str()),
            "a secret leaked into output"
        );
        let bytes = w.state_bytes();
        assert!(
            !bytes
                .windows(secret.len())
                .any(|win| win == secret.as_bytes()),
            "a secret is in the state directory in plain text"
        );
    }
}

/// A password verifier (`SCRAM-SHA-256$…`, or `md5` and 32 hex digits) somewhere in `text`.
fn verifier_in(text: &str) -> Option<&str> {
    if let Some(i) = text.find("SCRAM-SHA-256$") {
        return Some(&text[i..text.len().min(i + 40)]);
    }
    text.match_indices("md5")
        .map(|(i, _)| &text[i..])
        .find(|rest| rest.len() >= 35 && rest.as_bytes()[3..35].iter().all(u8::is_ascii_hexdigit))
}

#[tokio::test]
async fn trace_logs_never_contain_a_password_verifier() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    let mut logs = String::new();
    for args in [&["apply", "--auto-approve"][..], &["plan"]] {
        let out = w.cmd(args).env("RUST_LOG", "trace").output().expect("run");
        assert!(out.status.success(), "{args:?} failed");
        logs += &String::from_utf8_lossy(&out.stderr);
    }
    // Rotating the password sends an ALTER ROLE with a new verifier.
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  rotation: 1\n"),
    );
    let out = w
        .cmd(&["apply", "--auto-approve"])
        .env("RUST_LOG", "trace")
        .output()
        .expect("run");
    logs += &String::from_utf8_lossy(&out.stderr);
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging is on"
    );
    assert_eq!(
        verifier_in(&logs),
        None,
        "a password verifier is in the logs"
    );
}

#[tokio::test]
async fn a_saved_plan_applies_and_a_terminal_yes_approves() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role, db2, role2) = (
        unique("tend_db_"),
        unique("tend_user_"),
        unique("tend_db_"),
        unique("tend_user_"),
    );
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    let file = w.dir.path().join("a.plan");
    let file = file.to_str().expect("utf-8");
    w.run(&["plan", "--out", file]).ok();
    let saved = std::fs::read_to_string(file).expect("plan file");
    assert!(
        !saved.contains(&pg().password),
        "the saved plan holds no credential"
    );
    let r = w.run(&["apply", file]).ok();
    assert!(
        r.stdout.contains("Apply complete! Resources: 1 added"),
        "{}",
        r.stdout
    );
    assert!(exists("db", &db).await);
    // The same file again is stale: state moved on.
    assert_eq!(w.run(&["apply", file]).code, 1);

    w.write("db2.yaml", &database_yaml("b", &db2, &role2, ""));
    let r = w.on_a_tty("apply", "yes\n", &[]).ok();
    assert!(
        r.stdout.contains("Apply complete! Resources: 1 added"),
        "{}",
        r.stdout
    );
    assert!(exists("db", &db2).await);
}

#[tokio::test]
async fn the_backup_restores_state_with_its_secrets() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();
    let before = password_in_state(&w, "a");
    let backup = w.dir.path().join("backup.json");
    std::fs::copy(w.state.join("backup.json"), &backup).expect("copy backup");
    std::fs::remove_dir_all(w.state.join("db")).expect("lose the store");
    w.run(&["state", "import", backup.to_str().expect("utf-8")])
        .ok();
    assert_eq!(password_in_state(&w, "a"), before);
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "restored state converges: {}", r.all());
}

#[tokio::test]
async fn a_lost_store_beside_its_backup_is_refused_and_the_backup_restores() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();
    let before = password_in_state(&w, "a");
    let backup_path = w.state.join("backup.json");
    let backup = std::fs::read(&backup_path).expect("backup");
    std::fs::remove_dir_all(w.state.join("db")).expect("lose the store");

    let restore = format!(
        "tend --state {} state import {}",
        w.state.display(),
        backup_path.display()
    );
    for args in [&["apply", "--auto-approve"][..], &["plan"]] {
        let r = w.run(args);
        assert_eq!(r.code, 1, "{args:?} is refused: {}", r.all());
        assert_has(&r, &restore);
    }
    assert_eq!(
        std::fs::read(&backup_path).expect("backup"),
        backup,
        "the backup is intact byte for byte"
    );
    assert!(!w.state.join("db").exists(), "no new history was started");

    // A tampered copy is refused; the backup itself restores.
    let tampered = w.dir.path().join("tampered.json");
    let text = String::from_utf8(backup.clone()).expect("utf-8");
    std::fs::write(
        &tampered,
        text.replacen("\"generation\":1", "\"generation\":7", 1),
    )
    .expect("write");
    let r = w.run(&["state", "import", tampered.to_str().expect("utf-8")]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert_has(&r, "integrity check");
    w.run(&["state", "import", backup_path.to_str().expect("utf-8")])
        .ok();
    assert_eq!(
        password_in_state(&w, "a"),
        before,
        "no password was rotated"
    );
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "restored state converges: {}", r.all());
}

#[tokio::test]
async fn rotation_changes_the_password() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();
    let old = password_in_state(&w, "a");
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  rotation: 1\n"),
    );
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(r.stdout.contains("~ rotation"), "{}", r.stdout);
    let new = password_in_state(&w, "a");
    assert_ne!(old, new);
    pg().connect_as(&role, &new, &db)
        .await
        .expect("new password works");
    assert!(
        pg().connect_as(&role, &old, &db).await.is_err(),
        "old password still works"
    );
}

#[tokio::test]
async fn delete_honours_on_delete_and_prevent_destroy() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let names: Vec<(String, String)> = (0..3)
        .map(|_| (unique("tend_db_"), unique("tend_user_")))
        .collect();
    w.write("server.yaml", &server_yaml());
    w.write(
        "keep.yaml",
        &database_yaml("keep", &names[0].0, &names[0].1, ""),
    );
    w.write(
        "drop.yaml",
        &database_yaml("gone", &names[1].0, &names[1].1, "  on_delete: drop\n"),
    );
    w.write(
        "guard.yaml",
        &database_yaml(
            "guard",
            &names[2].0,
            &names[2].1,
            "  lifecycle: {prevent_destroy: true}\n",
        ),
    );
    w.run(&["apply", "--auto-approve"]).ok();

    // A tenant session is connected while its database is dropped.
    let session = pg()
        .connect_as(&names[1].1, &password_in_state(&w, "gone"), &names[1].0)
        .await
        .expect("tenant session");
    w.remove("keep.yaml");
    w.remove("drop.yaml");
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(
        r.stdout
            .contains("Plan: 0 to add, 0 to change, 2 to destroy."),
        "{}",
        r.stdout
    );
    assert!(
        exists("db", &names[0].0).await && exists("role", &names[0].1).await,
        "retained"
    );
    assert!(
        !exists("db", &names[1].0).await && !exists("role", &names[1].1).await,
        "dropped"
    );
    drop(session);

    w.remove("guard.yaml");
    let r = w.run(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stdout.contains("prevent_destroy"), "{}", r.stdout);
    let r = w.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1);
    assert!(
        exists("db", &names[2].0).await,
        "protected database survived"
    );
}

#[tokio::test]
async fn a_failure_blocks_only_its_dependents() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db_ok, role_ok) = (unique("tend_db_"), unique("tend_user_"));
    let (db_child, db_bad) = (unique("tend_db_"), unique("tend_db_"));
    w.write("server.yaml", &server_yaml());
    // `bad` fails at apply: role names starting with pg_ are reserved (behind a ref, or
    // validate would refuse it first). `child` reads bad's output.
    w.write(
        "dbs.yaml",
        &[
            database_yaml("ok", &db_ok, &role_ok, ""),
            database_yaml(
                "bad",
                &db_bad,
                "\"pg_${PostgresServer.main.spec.sslmode}\"",
                "",
            ),
            database_yaml(
                "child",
                &db_child,
                "\"${PostgresDatabase.bad.status.outputs.username}\"",
                "",
            ),
        ]
        .concat(),
    );
    let r = w.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all()
            .contains("blocked PostgresDatabase.child: blocked by PostgresDatabase.bad"),
        "{}",
        r.all()
    );
    assert!(
        exists("db", &db_ok).await,
        "the independent database was created"
    );
    assert!(!exists("db", &db_child).await);
    let store = SledStore::open(&w.state).expect("state");
    let bad = store
        .get(&"PostgresDatabase.bad".parse().expect("addr"))
        .expect("read")
        .expect("recorded");
    assert_eq!(bad.status, Status::Failed);
    assert!(
        store
            .get(&"PostgresDatabase.child".parse().expect("addr"))
            .expect("read")
            .is_none()
    );
    let run = &store.runs(1).expect("runs")[0];
    assert_eq!(run.exit_code, 1);
}

/// The last write of an action is not waited on (`StateStore::put_lazy`): a crash before the
/// next flush leaves the record as the action's first, flushed writes left it, `applying`
/// with the password the provider journaled before the server saw it. Made by hand after a
/// real apply, that record converges on the next apply: the database and role are tend's
/// (not refused as found outside state), the journaled password is kept, nothing is doubled.
#[tokio::test]
async fn a_lost_final_write_leaves_an_applying_record_that_the_next_apply_converges() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let prefix = unique("tend_lazy_");
    let (db, role) = (format!("{prefix}_db"), format!("{prefix}_user"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();
    let addr: Address = "PostgresDatabase.a".parse().expect("address");
    {
        let store = SledStore::open(&w.state).expect("state");
        let done = store.get(&addr).expect("read").expect("recorded");
        let mut begun = tend::state::Record::new(addr.clone(), done.created_at);
        begun.spec = done.spec.clone();
        begun.connection = done.connection.clone();
        begun.depends_on = done.depends_on.clone();
        begun.status = Status::Applying;
        for k in ["password", "rotation"] {
            begun.private.insert(k.to_owned(), done.private[k].clone());
        }
        store
            .put(&begun)
            .expect("the record as the action began it");
    }
    let password = password_in_state(&w, "a");
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(!r.all().contains("outside"), "{}", r.all());
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    let store = SledStore::open(&w.state).expect("state");
    let rec = store.get(&addr).expect("read").expect("recorded");
    assert_eq!(rec.status, Status::Ready);
    drop(store);
    assert_eq!(
        password_in_state(&w, "a"),
        password,
        "the journaled password is kept"
    );
    pg().connect_as(&role, &password, &db)
        .await
        .expect("the journaled password logs in");
    assert!(exists("role", &role).await && exists("db", &db).await);
}

#[tokio::test]
async fn kill_9_during_apply_never_loses_a_password_or_leaves_a_duplicate() {
    use rand::Rng;
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let prefix = unique("tend_crash_");
    w.write("server.yaml", &server_yaml());
    let docs: Vec<String> = (0..50)
        .map(|i| {
            database_yaml(
                &format!("t{i}"),
                &format!("{prefix}_db_{i}"),
                &format!("{prefix}_user_{i}"),
                "",
            )
        })
        .collect();
    w.write("dbs.yaml", &docs.concat());
    let mut rng = rand::rng();
    for _ in 0..5 {
        let mut child = w
            .cmd(&["apply", "--auto-approve", "--parallelism", "4"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        std::thread::sleep(Duration::from_millis(rng.random_range(50..1500)));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
    }
    w.run(&["apply", "--auto-approve"]).ok();
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());

    let admin = pg().admin().await;
    let like = format!("{prefix}\\_%");
    let dbs: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
            &[&like],
        )
        .await
        .expect("q")
        .get(0);
    let roles: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
            &[&like],
        )
        .await
        .expect("q")
        .get(0);
    assert_eq!((dbs, roles), (50, 50), "no duplicate, no orphan");
    let store = SledStore::open(&w.state).expect("state");
    let records = store.list().expect("list");
    assert_eq!(records.len(), 50);
    for rec in records {
        assert_eq!(rec.status, Status::Ready, "{}", rec.address);
        let i = rec.address.name.trim_start_matches('t');
        let pw = rec
            .private
            .get("password")
            .and_then(|v| v.as_str())
            .expect("password")
            .to_owned();
        pg().connect_as(
            &format!("{prefix}_user_{i}"),
            &pw,
            &format!("{prefix}_db_{i}"),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "{}: the password in state does not authenticate: {e}",
                rec.address
            )
        });
    }
}

/// A PostgreSQL that accepted the connection and then froze (SIGSTOP): the kernel completes the
/// TCP handshake, nothing ever answers. The listener is kept open, never accepted from.
fn frozen_server() -> (std::net::TcpListener, u16) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

#[tokio::test]
async fn a_refresh_that_gets_no_answer_is_a_warning_within_its_deadline() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_fz_"), unique("tend_fzu_"));
    w.write("server.yaml", &server_yaml());
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  timeout: 3s\n"),
    );
    w.run(&["apply", "--auto-approve"]).ok();

    // The same database, now reached through a server that never answers (the connection is
    // not part of the spec: nothing changes but where the refresh goes).
    let (_frozen, port) = frozen_server();
    w.write(
        "server.yaml",
        &server_yaml().replace(
            "spec: {sslmode: disable}",
            &format!("spec: {{sslmode: disable, host: 127.0.0.1, port: {port}}}"),
        ),
    );
    for (args, deadline) in [
        (vec!["plan", "--refresh-timeout", "1s"], "1s"),
        (vec!["plan"], "3s"), // the resource's own timeout
    ] {
        let started = std::time::Instant::now();
        let r = w.run(&args);
        let took = started.elapsed();
        assert_eq!(r.code, 0, "{}", r.all());
        assert!(
            r.all().contains(&format!(
                "could not refresh PostgresDatabase.a: no answer within {deadline}; planned from state alone"
            )),
            "{}",
            r.all()
        );
        assert!(r.stdout.contains("No changes."), "{}", r.stdout);
        let limit = humantime::parse_duration(deadline).expect("duration") + Duration::from_secs(5);
        assert!(took < limit, "{args:?} took {took:?}");
    }
}

async fn is_superuser(role: &str) -> bool {
    pg().admin()
        .await
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .expect("role")
        .get(0)
}

#[tokio::test]
async fn a_superuser_that_exists_outside_tend_is_never_taken_over() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_own_"), unique("tend_alice_"));
    let admin = pg().admin().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} SUPERUSER LOGIN PASSWORD 'hers'"
        ))
        .await
        .expect("create the superuser");
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));

    let r = w.run(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains(
            "PostgresDatabase.a already exists outside tend's state, and tend does not change what it did not create"
        ),
        "{}",
        r.all()
    );
    let r = w.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.all());

    // Asking to adopt it is refused too: adopting would demote her.
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  lifecycle: {adopt: true}\n"),
    );
    let r = w.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains(&format!(
            "PostgresDatabase.a cannot be adopted: the role `{role}` exists with SUPERUSER"
        )),
        "{}",
        r.all()
    );
    assert!(is_superuser(&role).await, "still a superuser");
    assert!(!exists("db", &db).await, "nothing was created for her");
    pg().connect_as(&role, "hers", "postgres")
        .await
        .expect("her password still works");
    admin
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .expect("clean up");
}

#[tokio::test]
async fn a_database_with_rows_is_adopted_only_when_asked_and_keeps_its_rows() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_adb_"), unique("tend_aown_"));
    let p = pg();
    let admin = p.admin().await;
    admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .expect("an existing role");
    admin
        .batch_execute(&format!("CREATE DATABASE {db} OWNER {role}"))
        .await
        .expect("an existing database");
    p.connect_as(&p.user, &p.password, &db)
        .await
        .expect("connect to it")
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        .await
        .expect("rows");
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    let r = w.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains("already exists outside tend's state"),
        "{}",
        r.all()
    );

    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  lifecycle: {adopt: true}\n"),
    );
    let r = w.run(&["plan"]).ok();
    assert!(
        r.stdout.contains("# PostgresDatabase.a will be adopted"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("<= PostgresDatabase.a"), "{}", r.stdout);
    assert!(
        r.stdout
            .contains("Plan: 1 to adopt, 0 to add, 0 to change, 0 to destroy."),
        "{}",
        r.stdout
    );
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(
        r.stdout.contains("PostgresDatabase.a: Adoption complete"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("Resources: 1 adopted, 0 added"),
        "{}",
        r.stdout
    );
    let rows: i64 = p
        .connect_as(&p.user, &p.password, &db)
        .await
        .expect("connect")
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, 2, "the rows are untouched");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "adopted and converged: {}", r.all());
    pg().connect_as(&role, &password_in_state(&w, "a"), &db)
        .await
        .expect("the adopted role logs in with the password tend set");
}

/// Issue 11: a symlinked subdirectory used to be skipped by the walk, so its resources planned
/// as destroys. It is followed: the same resources, no change.
#[tokio::test]
async fn a_symlinked_tenants_directory_plans_no_destroy() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_db_"), unique("tend_user_"));
    w.write("server.yaml", &server_yaml());
    w.write("tenants/t.yaml", &database_yaml("t", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();
    assert!(exists("db", &db).await);

    let moved = w.dir.path().join("tenants-elsewhere");
    std::fs::rename(w.manifests.join("tenants"), &moved).expect("move the tenants away");
    std::os::unix::fs::symlink(&moved, w.manifests.join("tenants")).expect("symlink them back");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    assert!(r.stdout.contains("No changes."), "{}", r.stdout);
    assert!(!r.stdout.contains("destroy"), "{}", r.stdout);
    assert!(exists("db", &db).await);
}

async fn count_rows(db: &str) -> i64 {
    let p = pg();
    p.connect_as(&p.user, &p.password, db)
        .await
        .expect("connect")
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .expect("count")
        .get(0)
}

/// A database with a table of two rows, made by hand outside tend.
async fn database_with_rows(db: &str, role: &str) {
    let p = pg();
    let admin = p.admin().await;
    admin
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        ))
        .await
        .expect("a role");
    admin
        .batch_execute(&format!("CREATE DATABASE {db} OWNER {role}"))
        .await
        .expect("a database");
    p.connect_as(&p.user, &p.password, db)
        .await
        .expect("connect to it")
        .batch_execute("CREATE TABLE orders (id int); INSERT INTO orders VALUES (1), (2)")
        .await
        .expect("rows");
}

/// Issue 11: `tend import` records an existing database as found, changing nothing; the next
/// plan shows what applying the manifest changes, and afterwards `on_delete: drop` may drop it.
#[tokio::test]
async fn tend_import_then_on_delete_drop_drops_it() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_idb_"), unique("tend_iown_"));
    database_with_rows(&db, &role).await;
    w.write("server.yaml", &server_yaml());
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  on_delete: drop\n"),
    );
    let r = w.run(&["plan"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains(&format!(
            "record it as it is with `tend import PostgresDatabase.a {db}`"
        )),
        "{}",
        r.all()
    );

    let r = w.run(&["import", "PostgresDatabase.a", "not_it"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains(&format!("names \"{db}\", not \"not_it\"")),
        "{}",
        r.all()
    );

    let r = w.run(&["import", "PostgresDatabase.a", &db]).ok();
    assert!(r.stdout.contains("nothing was changed"), "{}", r.stdout);
    assert_eq!(count_rows(&db).await, 2);
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stdout
            .contains("imported: tend has not applied its manifest yet"),
        "{}",
        r.stdout
    );
    w.run(&["apply", "--auto-approve"]).ok();
    assert_eq!(count_rows(&db).await, 2, "the apply keeps the rows");
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
    pg().connect_as(&role, &password_in_state(&w, "a"), &db)
        .await
        .expect("the imported role logs in with the password tend set");

    w.remove("db.yaml");
    w.run(&["apply", "--auto-approve"]).ok();
    assert!(!exists("db", &db).await, "imported, so tend's to drop");
    assert!(!exists("role", &role).await);
}

/// Issue 11: `on_delete: drop` drops only the database tend created; one dropped and made again
/// by hand under the same name (another OID, data tend knows nothing of) is refused, unless the
/// resource says `force_destroy: true`.
#[tokio::test]
async fn a_database_made_again_outside_tend_is_not_dropped_unless_forced() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_rdb_"), unique("tend_rown_"));
    w.write("server.yaml", &server_yaml());
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  on_delete: drop\n"),
    );
    w.run(&["apply", "--auto-approve"]).ok();
    pg().admin()
        .await
        .batch_execute(&format!("DROP DATABASE {db}"))
        .await
        .expect("drop by hand");
    database_with_rows(&db, &role).await;

    w.remove("db.yaml");
    let r = w.run(&["apply", "--auto-approve"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.all().contains("is not the one tend created or took over"),
        "{}",
        r.all()
    );
    assert!(r.all().contains("force_destroy: true"), "{}", r.all());
    assert_eq!(count_rows(&db).await, 2, "its rows survive");

    w.write(
        "db.yaml",
        &database_yaml(
            "a",
            &db,
            &role,
            "  on_delete: drop\n  force_destroy: true\n",
        ),
    );
    w.run(&["apply", "--auto-approve"]).ok();
    w.remove("db.yaml");
    w.run(&["apply", "--auto-approve"]).ok();
    assert!(!exists("db", &db).await, "forced");
}

/// Issue 14 item 5: on a terminal a live summary line (done / running / failed / left, elapsed)
/// sits under the progress lines and is taken away at the end; not on a pipe.
#[tokio::test]
async fn a_long_apply_on_a_terminal_shows_a_live_summary_line() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    w.write("server.yaml", &server_yaml());
    let mut names = Vec::new();
    for i in 0..3 {
        let (db, role) = (unique("tend_ldb_"), unique("tend_lown_"));
        w.write(
            &format!("db{i}.yaml"),
            &database_yaml(&format!("d{i}"), &db, &role, "  on_delete: drop\n"),
        );
        names.push(db);
    }
    let out = w
        .tty_cmd("apply --auto-approve")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("\r\x1b[2K"),
        "the summary is redrawn in place: {text:?}"
    );
    assert!(text.contains(" running, 0 failed, "), "{text:?}");
    assert!(
        text.contains("[3 done, 0 running, 0 failed, 0 left; "),
        "{text:?}"
    );
    assert!(
        text.contains("Apply complete! Resources: 3 added"),
        "{text:?}"
    );

    // Not a terminal: the plain lines only.
    for i in 0..3 {
        w.remove(&format!("db{i}.yaml"));
    }
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(!r.stdout.contains('\x1b'), "{:?}", r.stdout);
    assert!(!r.stdout.contains(" left; "), "{}", r.stdout);
    for db in names {
        assert!(!exists("db", &db).await);
    }
}
