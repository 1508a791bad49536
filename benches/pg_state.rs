//! The PostgreSQL state backend (issue 13): a no-op `plan --refresh=false` of 10,000
//! resources on it beside the same plan on sled, in one run (goal: ≤ 2× sled), and failover:
//! from the leader's `kill -9` to the first action of the new leader, median and p90 over 10
//! failovers with a 5 s lease (goal: ≤ 5 s).
//!
//! The sled state is seeded through the library as an apply would record it, then moved into
//! PostgreSQL with `tend state migrate` (so the migration of 10,000 records is timed too).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tend::desired::Resolver;
use tend::state::{Record, SledStore, StateStore, Status};
use tend::value::Value;
use tend_test_support::{bench, pg, unique};

const SERVER: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data: {host: db.example.internal, port: 5432, user: admin, password: {fromFile: admin.password}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: require}\n";

fn main() {
    bench::require_pg();
    noop_plan();
    failover();
}

fn seed(manifests: &Path, state: &Path) {
    let set = tend::manifest::load(manifests).expect("manifests load");
    let store = SledStore::open(state).expect("state");
    let mut resolver = Resolver::new(&set);
    for m in set.managed() {
        let d = resolver.desired(&m.address, &|_| None).expect("desired");
        let mut rec = Record::new(m.address.clone(), 0);
        rec.spec_hash = d.spec.digest(store.digest_key());
        rec.spec = d.spec.clone();
        rec.connection = d.connection.clone();
        rec.status = Status::Ready;
        rec.generation = 1;
        rec.depends_on = d.depends_on.clone();
        for k in ["database", "owner"] {
            rec.outputs
                .insert(k.to_owned(), d.spec.get(k).cloned().unwrap_or(Value::Null));
        }
        rec.private.insert(
            "password".into(),
            Value::Secret(tend::value::Sensitive::new("x".repeat(32))),
        );
        store.put(&rec).expect("seed");
    }
}

fn noop_plan() {
    let (n, runs) = if bench::full() { (10_000, 5) } else { (200, 1) };
    let tmp = tempfile::tempdir().expect("temp dir");
    let manifests = bench::write_databases(tmp.path(), n, "pgbench", SERVER);
    let sled = tmp.path().join("state");
    seed(&manifests, &sled);
    let url = pg().url("postgres");
    let schema = unique("tend_bench_");

    // A copy of the sled state, migrated; the original stays usable for the sled side.
    let copy = tmp.path().join("copy");
    copy_dir(&sled, &copy);
    let started = Instant::now();
    bench::time(
        &mut bench::tend(
            env!("CARGO_BIN_EXE_tend"),
            &manifests,
            &copy,
            &["state", "migrate", "--to", &url, "--to-schema", &schema],
        ),
        0,
    );
    let migrate = started.elapsed();

    let plan = ["plan", "--refresh=false", "--detailed-exitcode"];
    let (mut on_sled, mut on_pg) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        // Alternated, so neither side gets a warmer machine.
        on_sled.push(bench::time(
            &mut bench::tend(env!("CARGO_BIN_EXE_tend"), &manifests, &sled, &plan),
            0,
        ));
        let mut c = bench::tend(
            env!("CARGO_BIN_EXE_tend"),
            &manifests,
            Path::new(&url),
            &plan,
        );
        c.args(["--state-schema", &schema])
            .arg("--work-dir")
            .arg(&copy);
        on_pg.push(bench::time(&mut c, 0));
    }
    let (s, p) = (bench::median(on_sled), bench::median(on_pg));
    println!(
        "pg_state noop plan: {n} resources, {runs} runs: sled median {:.3}s, PostgreSQL median {:.3}s, ratio {:.2}x (goal <= 2x); state migrate of {n} records {:.2}s",
        s.as_secs_f64(),
        p.as_secs_f64(),
        p.as_secs_f64() / s.as_secs_f64(),
        migrate.as_secs_f64()
    );
}

fn copy_dir(from: &Path, to: &Path) {
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp")
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// A daemon of the failover deployment.
struct Host {
    child: Child,
    log: std::path::PathBuf,
}

impl Host {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn failover() {
    let rounds = if bench::full() { 10 } else { 2 };
    let tmp = tempfile::tempdir().expect("temp dir");
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests");
    std::fs::write(manifests.join("server.yaml"), bench::PG_SERVER_YAML).expect("server");
    let key = tmp.path().join("shared.key");
    std::fs::write(&key, [9u8; 32]).expect("key");
    let mut perms = std::fs::metadata(&key).expect("key").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
    std::fs::set_permissions(&key, perms).expect("chmod");
    let url = pg().url("postgres");
    let schema = unique("tend_failover_");
    let prefix = unique("fb");
    let start = |name: &str| -> Host {
        let log = tmp.path().join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_tend"))
            .arg("--manifests")
            .arg(&manifests)
            .args(["--state", &url, "--state-schema", &schema])
            .args(["--state-lease", "5s"])
            .arg("--work-dir")
            .arg(tmp.path().join(name))
            .args(["daemon", "--resync", "1h"])
            .env("TEND_STATE_KEY_FILE", &key)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("daemon");
        Host { child, log }
    };
    let wait = |h: &Host, what: &str, check: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check(&h.log()) {
            assert!(Instant::now() < deadline, "no {what}:\n{}", h.log());
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let mut leader = start("a");
    wait(&leader, "lead", &|l| l.contains("took the lead"));
    let mut standby = start("b");
    wait(&standby, "standby", &|l| l.contains("tend daemon starting"));
    std::thread::sleep(Duration::from_millis(300));
    let mut times = Vec::new();
    for round in 0..rounds {
        // The next database appears while the leader is gone: the new leader's first action.
        let db = bench::write_one(&manifests, round, &prefix);
        let creating = format!("PostgresDatabase.{db}: Creating...");
        let before = standby.log().matches("took the lead").count();
        leader.child.kill().expect("kill -9");
        let died = Instant::now();
        let _ = leader.child.wait();
        wait(&standby, "first action", &|l| {
            l.matches("took the lead").count() > before && l.contains(&creating)
        });
        times.push(died.elapsed());
        // The old leader's host comes back as the standby.
        std::mem::swap(&mut leader, &mut standby);
        standby = start(&format!("h{round}"));
        wait(&standby, "standby", &|l| l.contains("tend daemon starting"));
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut sorted = times.clone();
    sorted.sort();
    let p90 = sorted[(sorted.len() * 9).div_ceil(10).saturating_sub(1)];
    println!(
        "pg_state failover: {rounds} failovers, lease 5s: leader killed -> new leader's first action median {:.2}s, p90 {:.2}s (goal <= 5 s)",
        bench::median(times).as_secs_f64(),
        p90.as_secs_f64()
    );
    drop(leader);
    drop(standby);
    bench::drop_databases(tmp.path(), &[prefix], rounds);
}
