//! Several `tend daemon`s on one PostgreSQL state, as real processes against a real
//! PostgreSQL (scripts/test): exactly one leads; killed, paused or cut off, it hands over to
//! a standby within its lease, the standby converges, and the old leader writes nothing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend::address::Address;
use tend::state::{PgOpen, PgStore, PgTarget, StateStore};
use tend_nomad_double::NomadDouble;
use tend_test_support::{Workspace, database_yaml, pg, server_yaml, unique};

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

fn leads(log: &str) -> bool {
    log.contains("took the lead of the state")
}

/// `n` tenants (a database, a role and a Nomad job each) on the Nomad double.
fn tenants(d: &Deployment, nomad: &NomadDouble, prefix: &str, n: u32) {
    d.w.write("server.yaml", &server_yaml());
    d.w.write(
        "nomad.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{}\"}}}}\n",
            nomad.address()
        ),
    );
    d.w.write(
        "template.yaml",
        &format!(
            "apiVersion: tend/v1\nkind: TenantTemplate\nmetadata: {{name: app}}\nspec:\n  server: main\n  database: \"{prefix}_org_{{org_id}}\"\n  owner: \"{prefix}_user_{{org_id}}\"\n  tiers:\n    standard: {{count: 1, cpu: 100, memory_mb: 64}}\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - Name: app\n            Driver: docker\n            Config: {{image: \"example/app:{{version}}\"}}\n"
        ),
    );
    let mut all = String::new();
    for org in 0..n {
        all.push_str(&format!(
            "---\napiVersion: tend/v1\nkind: TenantInstance\nmetadata: {{name: t{org}}}\nspec: {{template: app, org_id: {org}, version: \"1.0.0\", tier: standard, state: running}}\n"
        ));
    }
    d.w.write("tenants.yaml", &all);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_standby_takes_over_from_a_leader_killed_mid_apply_and_converges_without_duplicates() {
    let d = Deployment::new();
    let nomad = NomadDouble::start();
    let prefix = unique("fo");
    let n = 100;
    tenants(&d, &nomad, &prefix, n);
    let a = d.daemon("a", "3s");
    a.wait_for("a leads", Duration::from_secs(30), leads);
    let b = d.daemon("b", "3s");
    b.wait_for("b stands by", Duration::from_secs(30), |_| {
        b.metrics().contains("tend_leader 0")
    });
    // `tend status` on the standby says so and names the leader.
    let status = d.tend("b", &["status"]).output().expect("status");
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains("Role: standby (leader: `tend daemon`"),
        "{status}"
    );

    // Kill the leader hard in the middle of its apply.
    a.wait_for("a is mid-apply", Duration::from_secs(120), |log| {
        log.matches("Creation complete").count() >= 30
    });
    a.signal("-KILL");
    let took = b.wait_for("b takes over", Duration::from_secs(30), leads);
    assert!(
        took <= Duration::from_secs(5),
        "takeover took {took:?}, more than the lease + 2 s"
    );
    b.wait_for("b converges", Duration::from_secs(180), |log| {
        log.contains("apply complete")
    });
    let metrics = b.metrics();
    assert!(metrics.contains("tend_leader 1"), "{metrics}");
    assert!(metrics.contains("tend_failovers_total 1"), "{metrics}");

    // Everything exists once: one role and one database per tenant, each job registered once.
    let like = format!("{prefix}\\_%");
    let admin = pg().admin().await;
    for q in [
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1",
        "SELECT count(*) FROM pg_database WHERE datname LIKE $1",
    ] {
        let found: i64 = admin.query_one(q, &[&like]).await.expect("count").get(0);
        assert_eq!(found, i64::from(n), "{q}");
    }
    let mut registers = std::collections::BTreeMap::<String, usize>::new();
    for r in nomad.requests() {
        if r.method == "PUT" && r.path == "/v1/jobs" && r.status == 200 {
            let id = r.body["Job"]["ID"].as_str().unwrap_or_default().to_owned();
            *registers.entry(id).or_default() += 1;
        }
    }
    assert_eq!(registers.len(), n as usize, "{registers:?}");
    assert!(
        registers.values().all(|c| *c == 1),
        "a job registered twice: {registers:?}"
    );
    // Every tenant's password, delivered through its job's Variable, logs in.
    for org in 0..n {
        let var = nomad
            .variable("default", &format!("nomad/jobs/app-org-{org}"))
            .unwrap_or_else(|| panic!("the Variable of org {org}"));
        let password = var["Items"]["DB_PASSWORD"].as_str().expect("password");
        pg().connect_as(
            &format!("{prefix}_user_{org}"),
            password,
            &format!("{prefix}_org_{org}"),
        )
        .await
        .unwrap_or_else(|e| panic!("org {org}'s password does not log in: {e}"));
    }
    // A plan from state alone (another host, no daemon) has nothing to do.
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
    // The records read back with the deployment's key.
    let store = d.store();
    let rec = store
        .get(
            &"TenantInstance.t0/PostgresDatabase"
                .parse::<Address>()
                .expect("address"),
        )
        .expect("read")
        .expect("recorded");
    assert!(rec.private.contains_key("password"));
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
