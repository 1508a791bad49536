//! `tend daemon` as a child process against a real PostgreSQL: it converges on file changes,
//! freezes on a bad file without destroying anything, heals drift at resync, never destroys
//! without --prune, holds large prunes, reloads on SIGHUP and exits 0 on SIGTERM.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use tend_test_support::{Run, Workspace, database_yaml, exists, owner_of, pg, server_yaml, unique};

struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(w: &Workspace, extra: &[&str]) -> Daemon {
        let log = w.dir.path().join("daemon.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut args = vec!["daemon"];
        if !extra.contains(&"--resync") {
            args.extend_from_slice(&["--resync", "1s"]);
        }
        args.extend_from_slice(extra);
        let child = w
            .cmd(&args)
            .stderr(Stdio::from(file))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        Daemon { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGTERM, then the exit code.
    fn stop(mut self) -> i32 {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s.code().unwrap_or(-1);
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not stop on SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn eventually<F, Fut>(what: &str, d: &Daemon, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for: {what}\n--- daemon log ---\n{}",
            d.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A loopback address with a port free right now, for `--metrics-addr`.
fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    format!("127.0.0.1:{port}")
}

/// A plain HTTP/1.1 GET; the whole response as text.
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: tend\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    out
}

async fn db_exists(name: &str) -> bool {
    exists("db", name).await
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_converges_freezes_on_bad_input_heals_drift_and_stops_cleanly() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (a, ra, b, rb) = (
        unique("tend_da_"),
        unique("tend_ua_"),
        unique("tend_db_"),
        unique("tend_ub_"),
    );
    w.write("server.yaml", &server_yaml());
    w.write("a.yaml", &database_yaml("a", &a, &ra, ""));
    let d = Daemon::start(&w, &[]);
    eventually("first load applies a", &d, || db_exists(&a)).await;

    // A new manifest is applied.
    w.write("b.yaml", &database_yaml("b", &b, &rb, ""));
    eventually("b created", &d, || db_exists(&b)).await;

    // A broken file freezes everything: removing a's manifest at the same time destroys nothing.
    w.write("broken.yaml", "apiVersion: tend/v1\nkind: [oops\n");
    w.remove("a.yaml");
    eventually("the load error is logged with its place", &d, || {
        let log = d.log();
        async move { log.contains("broken.yaml:2:7") }
    })
    .await;
    // Fixed: a is now an orphan, reported and kept (no --prune).
    w.remove("broken.yaml");
    eventually("the orphan is reported", &d, || {
        let log = d.log();
        async move { log.contains("orphaned") }
    })
    .await;
    assert!(db_exists(&a).await, "a was destroyed without --prune");

    // Drift is healed at the next resync.
    let admin = pg().admin().await;
    admin
        .batch_execute(&format!("ALTER DATABASE {b} OWNER TO {}", pg().user))
        .await
        .expect("drift");
    eventually("owner drift healed", &d, || {
        let b = b.clone();
        let rb = rb.clone();
        async move { owner_of(&b).await == rb }
    })
    .await;

    // SIGHUP reloads now.
    d.signal("-HUP");
    eventually("SIGHUP reload", &d, || {
        let log = d.log();
        async move { log.contains("SIGHUP") }
    })
    .await;

    let log = d.log();
    assert_eq!(d.stop(), 0, "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_destroys_removed_resources_but_holds_a_large_prune() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let names: Vec<(String, String)> = (0..3)
        .map(|_| (unique("tend_dp_"), unique("tend_up_")))
        .collect();
    w.write("server.yaml", &server_yaml());
    for (i, (db, role)) in names.iter().enumerate() {
        w.write(
            &format!("{i}.yaml"),
            &database_yaml(&format!("p{i}"), db, role, "  on_delete: drop\n"),
        );
    }
    let d = Daemon::start(&w, &["--prune", "--max-prune", "1"]);
    for (db, _) in &names {
        eventually("created", &d, || db_exists(db)).await;
    }
    // Two at once is more than --max-prune 1: held.
    w.remove("0.yaml");
    w.remove("1.yaml");
    eventually("the prune is held", &d, || {
        let log = d.log();
        async move { log.contains("holding the deletes") }
    })
    .await;
    assert!(db_exists(&names[0].0).await && db_exists(&names[1].0).await);
    // Back to one removal: pruned.
    w.write(
        "1.yaml",
        &database_yaml("p1", &names[1].0, &names[1].1, "  on_delete: drop\n"),
    );
    eventually("p0 pruned", &d, || {
        let db = names[0].0.clone();
        async move { !db_exists(&db).await }
    })
    .await;
    assert!(db_exists(&names[1].0).await && db_exists(&names[2].0).await);
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_talks_to_a_running_daemon_through_its_socket() {
    use std::os::unix::fs::PermissionsExt;
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_dc_"), unique("tend_uc_"));
    w.write("server.yaml", &server_yaml());
    let metrics_addr = free_addr();
    let d = Daemon::start(
        &w,
        &["--approve", "manual", "--metrics-addr", &metrics_addr],
    );
    let socket = w.state.join("tend.sock");
    eventually("the socket is up", &d, || {
        let s = socket.clone();
        async move { s.exists() }
    })
    .await;
    assert_eq!(
        std::fs::metadata(&socket)
            .expect("socket")
            .permissions()
            .mode()
            & 0o777,
        0o600
    );

    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    eventually("the plan waits for approval", &d, || {
        let r = w.run(&["status"]);
        async move { r.stdout.contains("waiting for approval") }
    })
    .await;
    assert!(!db_exists(&db).await, "--approve manual applied on its own");

    // plan and apply go through the daemon (the store is locked by it).
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 2, "{}", r.all());
    assert!(
        r.stdout.contains("PostgresDatabase.a will be created"),
        "{}",
        r.stdout
    );
    let r = w.run(&["apply"]);
    assert_eq!(r.code, 1, "no terminal, no --auto-approve: {}", r.all());
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(
        r.stdout.contains("PostgresDatabase.a: Creation complete"),
        "{}",
        r.stdout
    );
    assert!(db_exists(&db).await);
    let r = w.run(&["runs", "list"]).ok();
    assert!(r.stdout.contains("daemon"), "{}", r.stdout);
    let r = w.run(&["status"]).ok();
    assert!(r.stdout.contains("in sync"), "{}", r.stdout);
    assert!(r.stdout.contains("1 ready"), "{}", r.stdout);

    // Prometheus metrics and the health check.
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("tend_resources{status=\"ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tend_runs_total{result=\"ok\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tend_apply_duration_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tend_last_successful_reload_timestamp_seconds"),
        "{metrics}"
    );
    let health = http_get(&metrics_addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    // Another user is refused by the socket's mode.
    let r = std::process::Command::new("runuser")
        .args(["-u", "nobody", "--", "sh", "-c"])
        .arg(format!(
            "exec 3<>/dev/null; ls -l {} >/dev/null 2>&1; echo probe",
            socket.display()
        ))
        .output();
    if let Ok(out) = r {
        assert!(out.status.success(), "runuser works here");
        let nobody = std::process::Command::new("runuser")
            .args(["-u", "nobody", "--", "python3", "-c"])
            .arg(format!(
                "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ntry:\n  s.connect('{}')\n  print('connected')\nexcept OSError as e:\n  print('refused', e.errno)\n",
                socket.display()
            ))
            .output()
            .expect("run as nobody");
        let text = String::from_utf8_lossy(&nobody.stdout);
        assert!(
            text.contains("refused"),
            "another user reached the socket: {text}"
        );
    }
    assert_eq!(d.stop(), 0);
    assert!(!socket.exists(), "the socket is removed on exit");
}

/// `tend ARGS` on a pseudo-terminal with colour allowed; what the terminal showed.
fn on_a_terminal(w: &Workspace, args: &str) -> String {
    let out = w
        .tty_cmd(args)
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    assert!(out.status.success(), "{args}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_through_the_daemon_is_the_local_plan_rendered_by_the_cli() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_dp_"), unique("tend_up_"));
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    let plans = |w: &Workspace| {
        let text = w.run(&["plan"]).ok().stdout;
        let json = w.run(&["plan", "--json"]).ok().stdout;
        let detailed = w.run(&["plan", "--detailed-exitcode"]);
        (text, json, detailed.code, detailed.stdout)
    };

    // Without a daemon: the CLI plans from the state directory.
    let local = plans(&w);
    assert!(
        local.0.contains("PostgresDatabase.a will be created"),
        "{}",
        local.0
    );
    assert_eq!(local.2, 2);

    // A daemon that waits for approval holds the store, so these plans can only come
    // through its socket (a local open would fail on sled's lock).
    let d = Daemon::start(&w, &["--approve", "manual"]);
    eventually("the plan waits for approval", &d, || {
        let r = w.run(&["status"]);
        async move { r.stdout.contains("waiting for approval") }
    })
    .await;
    let through = plans(&w);
    assert_eq!(
        through.0, local.0,
        "the text plan differs through the daemon"
    );
    assert_eq!(
        through.1, local.1,
        "the JSON plan differs through the daemon"
    );
    assert_eq!(through.2, 2, "--detailed-exitcode through the daemon");
    assert_eq!(through.3, local.3);

    // On a terminal the CLI colours the plan the daemon sent; --no-color still works.
    let tty = on_a_terminal(&w, "plan");
    assert!(tty.contains("PostgresDatabase.a will be created"), "{tty}");
    assert!(tty.contains("\x1b["), "no colour on a terminal: {tty:?}");
    let plain = on_a_terminal(&w, "--no-color plan");
    assert!(
        plain.contains("will be created") && !plain.contains("\x1b["),
        "{plain:?}"
    );

    // What the daemon cannot do is refused as an error (exit 1), not a plan.
    let r = w.run(&["plan", "--out", "plan.json"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(
        r.stderr.starts_with("error: a daemon holds the state"),
        "{}",
        r.stderr
    );

    // Apply through the daemon prints what a local apply prints; then nothing is left to do.
    let r = w.run(&["apply", "--auto-approve"]).ok();
    assert!(r.stdout.starts_with(&local.0), "{}", r.stdout);
    assert!(
        r.stdout.contains("PostgresDatabase.a: Creation complete"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout
            .contains("Apply complete! Resources: 1 added, 0 changed, 0 destroyed."),
        "{}",
        r.stdout
    );
    assert!(exists("db", &db).await);
    let in_sync = plans(&w);
    assert_eq!(in_sync.2, 0, "no changes: {}", in_sync.3);
    let runs = w.run(&["runs", "list"]).ok().stdout;
    let id = runs.split_whitespace().next().expect("a run").to_owned();
    let run = w.run(&["runs", "show", &id]).ok().stdout;
    let r = w.run(&["runs", "show", "nope"]);
    assert_eq!((r.code, r.stderr.as_str()), (1, "error: no run nope\n"));
    assert_eq!(d.stop(), 0);

    // The same answers from the state directory once the daemon is gone.
    assert_eq!(plans(&w), in_sync);
    assert_eq!(w.run(&["runs", "list"]).ok().stdout, runs);
    assert_eq!(w.run(&["runs", "show", &id]).ok().stdout, run);
}

fn git(dir: &std::path::Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn with_source_git_only_committed_manifests_are_applied_and_runs_record_the_revision() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_dg_"), unique("tend_ug_"));
    git(&w.manifests, &["init", "-q", "-b", "main"]);
    w.write("server.yaml", &server_yaml());
    git(&w.manifests, &["add", "."]);
    git(&w.manifests, &["commit", "-qm", "server"]);
    let d = Daemon::start(&w, &["--source", "git"]);
    eventually("started", &d, || {
        let log = d.log();
        async move { log.contains("no changes") }
    })
    .await;

    // Saved but not committed: never seen.
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!db_exists(&db).await, "an uncommitted manifest was applied");

    git(&w.manifests, &["add", "db.yaml"]);
    git(&w.manifests, &["commit", "-qm", "tenant a"]);
    let head = git(&w.manifests, &["rev-parse", "HEAD"]);
    eventually("the commit is applied", &d, || db_exists(&db)).await;
    let r = w.run(&["status"]).ok();
    assert!(
        r.stdout.contains(&format!("Revision: {head}")),
        "{}",
        r.stdout
    );
    let id = w.run(&["runs", "list"]).ok().first_word();
    let r = w.run(&["runs", "show", &id]).ok();
    assert!(
        r.stdout.contains(&head),
        "the run records the revision: {}",
        r.stdout
    );
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_of_500_files_is_one_reload() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    git(&w.manifests, &["init", "-q", "-b", "main"]);
    w.write("server.yaml", &server_yaml());
    git(&w.manifests, &["add", "."]);
    git(&w.manifests, &["commit", "-qm", "base"]);
    git(&w.manifests, &["checkout", "-q", "-b", "many"]);
    for i in 0..500 {
        w.write(
            &format!("creds/c{i:03}.yaml"),
            &format!("apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad-{i}}}\nspec: {{provider: nomad, data: {{address: \"http://10.0.0.{}:4646\"}}}}\n", i % 250),
        );
    }
    git(&w.manifests, &["add", "."]);
    git(&w.manifests, &["commit", "-qm", "many"]);
    git(&w.manifests, &["checkout", "-q", "main"]);
    let d = Daemon::start(&w, &["--resync", "1h"]);
    eventually("started", &d, || {
        let log = d.log();
        async move { log.contains("no changes") }
    })
    .await;
    git(&w.manifests, &["checkout", "-q", "many"]);
    eventually("the checkout is loaded", &d, || {
        let log = d.log();
        async move {
            log.matches("reloading reason=\"manifests changed\"")
                .count()
                >= 1
                && log.matches("no changes").count() >= 2
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log = d.log();
    assert_eq!(
        log.matches("reloading reason=\"manifests changed\"")
            .count(),
        1,
        "{log}"
    );
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_or_kill_9_during_a_blocked_action_leaves_state_that_the_next_start_converges() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_ds_"), unique("tend_us_"));
    w.write("server.yaml", &server_yaml());
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  connection_limit: 5\n"),
    );
    let d = Daemon::start(&w, &["--grace", "1s"]);
    eventually("created", &d, || db_exists(&db)).await;

    // Another session holds the role's catalog row: tend's ALTER ROLE will wait on it.
    let blocker = pg().admin().await;
    blocker
        .batch_execute(&format!("BEGIN; ALTER ROLE {role} CONNECTION LIMIT 3"))
        .await
        .expect("hold the row");
    w.write(
        "db.yaml",
        &database_yaml("a", &db, &role, "  connection_limit: 7\n"),
    );
    eventually("the update started", &d, || {
        let log = d.log();
        async move { log.contains("PostgresDatabase.a: Modifying...") }
    })
    .await;
    let log = d.log();
    let started = Instant::now();
    assert_eq!(d.stop(), 0, "SIGTERM exits 0 after the grace period: {log}");
    assert!(started.elapsed() < Duration::from_secs(15));
    let store = tend::state::SledStore::open(&w.state).expect("state after SIGTERM");
    let rec = tend::state::StateStore::get(&store, &"PostgresDatabase.a".parse().expect("addr"))
        .expect("read")
        .expect("recorded");
    assert_ne!(
        rec.status,
        tend::state::Status::Ready,
        "state claims an action that never finished"
    );
    drop(store);

    // Again, killed hard this time.
    let d = Daemon::start(&w, &["--grace", "1s"]);
    eventually("the update started again", &d, || {
        let log = d.log();
        async move { log.contains("PostgresDatabase.a: Modifying...") }
    })
    .await;
    d.signal("-KILL");
    drop(d);

    // Released: the next start converges.
    blocker.batch_execute("ROLLBACK").await.expect("release");
    let d = Daemon::start(&w, &[]);
    eventually("converged after restart", &d, || {
        let log = d.log();
        async move { log.contains("apply complete") }
    })
    .await;
    let admin = pg().admin().await;
    let limit: i32 = admin
        .query_one(
            "SELECT rolconnlimit FROM pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await
        .expect("role")
        .get(0);
    assert_eq!(limit, 7);
    assert_eq!(d.stop(), 0);
    let r = w.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(r.code, 0, "{}", r.all());
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_refresh_that_hangs_exits_at_once() {
    // The job is applied against the Nomad double, then its credential points at a "Nomad"
    // that accepts connections and never answers: the daemon's startup refresh would wait out
    // the client's 60 s timeout, and its retries, before it read SIGTERM.
    let hole = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let hole_addr = format!("http://{}", hole.local_addr().expect("addr"));
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = std::sync::Arc::clone(&held);
    std::thread::spawn(move || {
        for conn in hole.incoming().flatten() {
            keep.lock().expect("lock").push(conn);
        }
    });
    let nomad = tend_nomad_double::NomadDouble::start();
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let manifest = |address: &str| {
        format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{address}\"}}}}\n---\napiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: web}}\nspec:\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - {{Name: app, Driver: docker, Config: {{image: \"app:1\"}}}}\n"
        )
    };
    w.write("nomad.yaml", &manifest(&nomad.address()));
    w.run(&["apply", "--auto-approve"]).ok();
    w.write("nomad.yaml", &manifest(&hole_addr));

    let d = Daemon::start(&w, &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while held.lock().expect("lock").is_empty() {
        assert!(
            Instant::now() < deadline,
            "no request reached the hole:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let log = d.log();
    assert_eq!(d.stop(), 0, "{log}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "SIGTERM waited {:?} for the refresh",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_permanent_failure_is_not_retried_until_its_manifest_changes() {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (ok_db, ok_role, bad_db, role) = (
        unique("tend_dr_"),
        unique("tend_ur_"),
        unique("tend_dx_"),
        unique("tend_ux_"),
    );
    w.write("server.yaml", &server_yaml());
    w.write("ok.yaml", &database_yaml("ok", &ok_db, &ok_role, ""));
    // A reserved role name known only once its ref resolves (a literal one is refused at
    // validate): a permanent error at every apply, while `ok` converges.
    w.write(
        "bad.yaml",
        &database_yaml(
            "bad",
            &bad_db,
            "\"pg_${PostgresServer.main.spec.sslmode}\"",
            "",
        ),
    );
    let metrics_addr = free_addr();
    let d = Daemon::start(
        &w,
        &[
            "--resync",
            "1h",
            "--retry-base",
            "100ms",
            "--stall-after",
            "3",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    eventually("the healthy one converges", &d, || db_exists(&ok_db)).await;
    eventually("reported as a permanent failure", &d, || {
        let r = w.run(&["status"]);
        async move {
            r.stdout
                .contains("Failed (permanent): PostgresDatabase.bad: ")
                && r.stdout.contains("not retried until its manifest")
        }
    })
    .await;
    let health = http_get(&metrics_addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    let metrics = http_get(&metrics_addr, "/metrics");
    assert!(
        metrics.contains("tend_failed_resources{class=\"permanent\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tend_next_retry_timestamp_seconds 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tend_resource_results_total{action=\"create\",outcome=\"failed\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        d.log().matches("PostgresDatabase.bad: Creating...").count(),
        1,
        "no retries of a permanent failure: {}",
        d.log()
    );

    // Fixing the manifest retries it.
    w.write("bad.yaml", &database_yaml("bad", &bad_db, &role, ""));
    eventually("converges once fixed", &d, || db_exists(&bad_db)).await;
    eventually("in sync", &d, || {
        let r = w.run(&["status"]);
        async move { r.stdout.contains("in sync") && !r.stdout.contains("Failed (") }
    })
    .await;
    assert_eq!(d.stop(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_never_answers_degrades_the_daemon_but_blocks_no_other_resource() {
    // A database applied on the real server, then reached through a "PostgreSQL" that accepts
    // connections and never answers (a SIGSTOPped server looks like this); a Nomad job beside
    // it on the double. A change to the job must be applied while the database's refresh hangs.
    let frozen = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let frozen_port = frozen.local_addr().expect("addr").port();
    let nomad = tend_nomad_double::NomadDouble::start();
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_fd_"), unique("tend_fdu_"));
    let job = |image: &str| {
        format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{}\"}}}}\n---\napiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: web}}\nspec:\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - {{Name: app, Driver: docker, Config: {{image: \"{image}\"}}}}\n",
            nomad.address()
        )
    };
    w.write("server.yaml", &server_yaml());
    w.write("db.yaml", &database_yaml("a", &db, &role, ""));
    w.write("nomad.yaml", &job("app:1"));
    w.run(&["apply", "--auto-approve"]).ok();
    w.write(
        "server.yaml",
        &server_yaml().replace(
            "spec: {sslmode: disable}",
            &format!("spec: {{sslmode: disable, host: 127.0.0.1, port: {frozen_port}}}"),
        ),
    );
    let metrics_addr = free_addr();
    let d = Daemon::start(
        &w,
        &[
            "--resync",
            "1h",
            "--refresh-timeout",
            "1s",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    eventually("the stuck refresh is reported", &d, || {
        let r = w.run(&["status"]);
        async move {
            r.stdout
                .contains("Refresh timed out (planned from state): PostgresDatabase.a")
        }
    })
    .await;
    let health = http_get(&metrics_addr, "/healthz");
    assert!(health.starts_with("HTTP/1.1 503"), "{health}");
    assert!(
        health.contains("no answer to the refresh of PostgresDatabase.a"),
        "{health}"
    );

    w.write("nomad.yaml", &job("app:2"));
    let image = || {
        nomad
            .job("default", "web")
            .and_then(|j| {
                j.pointer("/TaskGroups/0/Tasks/0/Config/image")
                    .and_then(|v| v.as_str().map(str::to_owned))
            })
            .unwrap_or_default()
    };
    eventually("the job change is applied meanwhile", &d, || {
        let got = image();
        async move { got == "app:2" }
    })
    .await;
    assert!(
        d.log().contains("refresh timed out"),
        "the log names the stuck refresh: {}",
        d.log()
    );
    assert_eq!(d.stop(), 0);
    drop(frozen);
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_are_masked_unless_asked_for_from_state_and_through_the_daemon_and_reads_are_logged_without_values()
 {
    let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
    let (db, role) = (unique("tend_do_"), unique("tend_uo_"));
    w.write("server.yaml", &server_yaml());
    w.write("a.yaml", &database_yaml("a", &db, &role, ""));
    w.run(&["apply", "--auto-approve"]).ok();

    // From state, no daemon.
    let all = w.run(&["output", "PostgresDatabase.a"]).ok();
    assert!(
        all.stdout.contains("password = (sensitive)"),
        "{}",
        all.stdout
    );
    assert!(
        all.stdout.contains(&format!("database = \"{db}\"")),
        "{}",
        all.stdout
    );
    let password = w
        .run(&[
            "output",
            "PostgresDatabase.a",
            "password",
            "--raw",
            "--show-secrets",
        ])
        .ok()
        .stdout
        .trim_end()
        .to_owned();
    assert!(password.len() >= 16, "{password:?}");
    assert!(!all.all().contains(&password));
    let json = w.run(&["output", "PostgresDatabase.a", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).expect("json");
    assert_eq!(v["password"]["sensitive"], true);
    assert_eq!(v["password"]["value"], "(sensitive)");
    assert_eq!(v["database"]["value"], db.as_str());
    let r = w.run(&["output", "PostgresDatabase.a", "url", "--raw"]);
    assert_eq!(r.code, 1, "{}", r.all());
    assert!(r.stderr.contains("--show-secrets"), "{}", r.stderr);
    let r = w.run(&["output", "PostgresDatabase.a", "nope"]);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("has no output `nope`"), "{}", r.stderr);
    let r = w.run(&["output", "PostgresDatabase.zz"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("PostgresDatabase.zz is not in state"),
        "{}",
        r.stderr
    );
    let local = Run::from(
        w.cmd(&["output", "PostgresDatabase.a", "url", "--show-secrets"])
            .env("RUST_LOG", "info")
            .output()
            .expect("run"),
    )
    .ok();
    assert!(local.stdout.contains(&password), "{}", local.stdout);
    assert!(
        local.stderr.contains("secret output read from state"),
        "{}",
        local.stderr
    );
    assert!(local.stderr.contains("key=url"), "{}", local.stderr);
    assert!(!local.stderr.contains(&password), "{}", local.stderr);

    // Through the daemon.
    let d = Daemon::start(&w, &[]);
    eventually("the daemon answers", &d, || async {
        w.run(&["status"]).stdout.contains("tend daemon (pid")
    })
    .await;
    let masked = w.run(&["output", "PostgresDatabase.a"]).ok();
    assert_eq!(masked.stdout, all.stdout);
    let raw = w
        .run(&[
            "output",
            "PostgresDatabase.a",
            "password",
            "--raw",
            "--show-secrets",
        ])
        .ok();
    assert_eq!(raw.stdout.trim_end(), password);
    let r = w.run(&["output", "PostgresDatabase.zz"]);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains("PostgresDatabase.zz is not in state"),
        "{}",
        r.stderr
    );
    eventually("the read is logged", &d, || async {
        d.log()
            .contains("secret output read through the control socket")
    })
    .await;
    let log = d.log();
    let line = log
        .lines()
        .find(|l| l.contains("secret output read through the control socket"))
        .expect("audit line");
    assert!(line.contains("key=password"), "{line}");
    assert!(line.contains("address=PostgresDatabase.a"), "{line}");
    assert!(line.contains("uid="), "{line}");
    assert!(
        !line.contains("key=url"),
        "only the key read is logged: {line}"
    );
    assert!(
        !log.contains(&password),
        "the secret leaked into the log:\n{log}"
    );
    assert_eq!(d.stop(), 0);
}
