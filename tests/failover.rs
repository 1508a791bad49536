//! Several `tend daemon`s on one PostgreSQL state, as real processes against a real
//! PostgreSQL (scripts/test): exactly one leads; killed, paused or cut off, it hands over to
//! a standby within its lease, the standby converges, and the old leader writes nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend::address::Address;
use tend::state::{PgOpen, PgStore, PgTarget, StateStore};
use tend_test_support::{Workspace, database_yaml, exists, pg, server_yaml, unique};

/// The test server as a connection URL.
fn url() -> String {
    pg().url("postgres")
}

/// One deployment: manifests, a state schema, and the key file every host shares.
struct Deployment {
    w: Workspace,
    schema: String,
    key: PathBuf,
}

impl Deployment {
    fn new() -> Deployment {
        let w = Workspace::new(env!("CARGO_BIN_EXE_tend"));
        // Where a host without TEND_STATE_KEY_FILE would look (for the library's reads).
        std::fs::create_dir(w.dir.path().join("keys")).expect("keys dir");
        let key = w.dir.path().join("keys").join("tend.key");
        std::fs::write(&key, [7u8; 32]).expect("key");
        let mut perms = std::fs::metadata(&key).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&key, perms).expect("chmod");
        Deployment {
            schema: unique("tend_fo_"),
            key,
            w,
        }
    }

    fn tend(&self, host: &str, args: &[&str]) -> Command {
        let mut c = Command::new(&self.w.tend);
        c.arg("--manifests")
            .arg(&self.w.manifests)
            .args(["--state", &url(), "--state-schema", &self.schema])
            .arg("--work-dir")
            .arg(self.w.dir.path().join(host))
            .args(args)
            .env("TEND_STATE_KEY_FILE", &self.key)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null());
        c
    }

    /// `tend daemon` as `host` (its own work dir and socket), with a short lease.
    fn daemon(&self, host: &str, lease: &str) -> Daemon {
        let log = self.w.dir.path().join(format!("{host}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let metrics = free_addr();
        let child = self
            .tend(
                host,
                &[
                    "--state-lease",
                    lease,
                    "daemon",
                    "--resync",
                    "2s",
                    "--parallelism",
                    "1",
                    "--metrics-addr",
                    &metrics,
                ],
            )
            .env("RUST_LOG", "info")
            .stderr(Stdio::from(file))
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn daemon");
        Daemon {
            child,
            log,
            metrics,
        }
    }

    fn store(&self) -> PgStore {
        PgStore::open(PgOpen {
            target: &PgTarget::new(&url(), &self.schema).expect("target"),
            local_dir: &self.w.dir.path().join("keys"),
            writer: None,
            lease: Duration::from_secs(30),
        })
        .expect("open the state read-only")
    }

    /// (epoch, written_at in ms since the epoch) of every resource row.
    async fn rows(&self) -> Vec<(i64, f64)> {
        pg().admin()
            .await
            .query(
                &format!(
                    "SELECT epoch, extract(epoch FROM written_at)::float8 * 1000 FROM {}.resources",
                    self.schema
                ),
                &[],
            )
            .await
            .expect("rows")
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
    metrics: String,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, sig: &str) {
        assert!(
            Command::new("kill")
                .args([sig, &self.pid()])
                .status()
                .expect("kill")
                .success()
        );
    }

    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(&self.metrics) else {
            return String::new();
        };
        let _ = write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: tend\r\nConnection: close\r\n\r\n"
        );
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }

    /// Wait until `check` holds for the log, or fail showing it.
    fn wait_for(&self, what: &str, within: Duration, check: impl Fn(&str) -> bool) -> Duration {
        let started = Instant::now();
        loop {
            let log = self.log();
            if check(&log) {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < within,
                "timed out waiting for: {what}\n--- log ---\n{log}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_addr() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port();
    format!("127.0.0.1:{port}")
}

/// `n` databases `d0…`, each with its own role, all named with `prefix`.
fn databases(d: &Deployment, prefix: &str, n: usize) {
    d.w.write("server.yaml", &server_yaml());
    let mut all = String::new();
    for i in 0..n {
        all.push_str(&database_yaml(
            &format!("d{i}"),
            &format!("{prefix}db{i}"),
            &format!("{prefix}role{i}"),
            "",
        ));
    }
    d.w.write("dbs.yaml", &all);
}

async fn count_roles(prefix: &str) -> i64 {
    pg().admin()
        .await
        .query_one(
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
            &[&format!("{prefix}role%")],
        )
        .await
        .expect("count")
        .get(0)
}

fn leads(log: &str) -> bool {
    log.contains("took the lead of the state")
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_takes_over_from_a_leader_killed_mid_apply_and_converges_without_duplicates() {
    let d = Deployment::new();
    let prefix = unique("fo");
    let n = 60;
    databases(&d, &prefix, n);
    let a = d.daemon("a", "3s");
    a.wait_for("a leads", Duration::from_secs(30), leads);
    let b = d.daemon("b", "3s");
    b.wait_for("b stands by", Duration::from_secs(30), |_| {
        b.metrics().contains("tend_leader 0")
    });
    // `tend status` on the standby says so and names the leader.
    let status = d.tend("b", &["status"]).output().expect("status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status.contains("standby"), "{status}");

    // Kill the leader hard in the middle of its apply.
    a.wait_for("a is mid-apply", Duration::from_secs(60), |log| {
        log.matches("Creation complete").count() >= 10
    });
    a.signal("-KILL");
    let took = b.wait_for("b takes over", Duration::from_secs(30), leads);
    assert!(
        took <= Duration::from_secs(5),
        "takeover took {took:?}, more than the lease + 2 s"
    );
    b.wait_for("b converges", Duration::from_secs(120), |log| {
        log.contains("apply complete")
    });
    assert!(b.metrics().contains("tend_leader 1"), "{}", b.metrics());
    assert!(
        b.metrics().contains("tend_failovers_total 1"),
        "{}",
        b.metrics()
    );

    // Everything exists once, and every recorded password logs in.
    assert_eq!(count_roles(&prefix).await, n as i64);
    let store = d.store();
    for i in 0..n {
        let db = format!("{prefix}db{i}");
        assert!(exists("db", &db).await, "{db}");
        let address: Address = format!("PostgresDatabase.d{i}").parse().expect("address");
        let rec = store.get(&address).expect("read").expect("recorded");
        let password = rec.private["password"]
            .as_str()
            .expect("password")
            .to_owned();
        pg().connect_as(&format!("{prefix}role{i}"), &password, &db)
            .await
            .unwrap_or_else(|e| panic!("d{i}'s recorded password does not log in: {e}"));
    }
    // The CLI plans through state alone (the daemon's socket is b's): no changes.
    let plan = d
        .tend("c", &["plan", "--detailed-exitcode"])
        .output()
        .expect("plan");
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_wakes_and_steps_down() {
    let d = Deployment::new();
    let prefix = unique("fp");
    databases(&d, &prefix, 1);
    let a = d.daemon("a", "2s");
    a.wait_for("a converges", Duration::from_secs(60), |log| {
        leads(log) && log.contains("apply complete")
    });
    let b = d.daemon("b", "2s");
    b.wait_for("b stands by", Duration::from_secs(30), |_| {
        b.metrics().contains("tend_leader 0")
    });

    a.signal("-STOP");
    b.wait_for("b takes over", Duration::from_secs(10), leads);
    let takeover_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as f64;
    // The new leader changes something.
    databases(&d, &prefix, 2);
    b.wait_for(
        "b applies the new database",
        Duration::from_secs(60),
        |log| log.contains("PostgresDatabase.d1: Creation complete"),
    );

    a.signal("-CONT");
    a.wait_for("a steps down", Duration::from_secs(10), |log| {
        log.contains("lost the lead")
    });
    // Give it every chance to write: a resync would come due within 2 s.
    std::thread::sleep(Duration::from_secs(3));
    let rows = d.rows().await;
    let newest = rows.iter().map(|r| r.0).max().expect("rows");
    for (epoch, written) in &rows {
        if *written > takeover_ms {
            assert_eq!(
                *epoch, newest,
                "a row written after the takeover by an old epoch"
            );
        }
    }
    assert!(a.metrics().contains("tend_leader 0"), "{}", a.metrics());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_session_is_terminated_steps_down_within_its_lease() {
    let d = Deployment::new();
    let prefix = unique("ft");
    databases(&d, &prefix, 1);
    let a = d.daemon("a", "3s");
    a.wait_for("a converges", Duration::from_secs(60), |log| {
        leads(log) && log.contains("apply complete")
    });
    pg().admin()
        .await
        .execute(
            &format!(
                "SELECT pg_terminate_backend(backend_pid) FROM {}.holders",
                d.schema
            ),
            &[],
        )
        .await
        .expect("terminate");
    let stepped = a.wait_for("a steps down", Duration::from_secs(10), |log| {
        log.contains("lost the lead")
    });
    assert!(stepped <= Duration::from_secs(3), "took {stepped:?}");
    // The lock is free: it takes the lead again, under a new epoch.
    a.wait_for("a leads again", Duration::from_secs(10), |log| {
        log.matches("took the lead of the state").count() >= 2
    });
}
