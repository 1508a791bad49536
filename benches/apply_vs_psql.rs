//! Apply of N new databases (500 under `cargo bench`) against a real PostgreSQL, with
//! `--parallelism 1` and with the default parallelism, beside the floor: a minimal psql script
//! that runs the same statements (CREATE ROLE with a SCRAM verifier, CREATE DATABASE … OWNER,
//! REVOKE ALL … FROM PUBLIC) in one session. Targets (issue 15 goal 4): `--parallelism 1`
//! ≤ 1.1× the script, the default ≤ 0.6× of it. Needs PG* in the environment (run through
//! scripts/bench). Beside them, not a goal: the same script split over 10 sessions at once,
//! which shows how much this machine's server gains from concurrency at all (the default
//! parallelism cannot beat it).
//!
//! As in `tenants`: rounds (`BENCH_ROUNDS`, 5 by default) in which the four take turns going
//! first, every timed step starting after a CHECKPOINT and a `sync` on a cluster without the
//! others' databases (dropped, untimed), and medians compared.

use tend_test_support::bench;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[derive(Clone, Copy)]
enum Side {
    Script,
    /// Not a goal's floor: the script split over as many sessions as tend's default
    /// parallelism, to show what this machine's server gives to concurrency at all.
    Sessions,
    Serial,
    Default,
}

fn main() {
    let full = bench::full();
    let n: usize = if full { 500 } else { 5 };
    let rounds = bench::rounds(5);
    bench::require_pg();
    let tmp = tempfile::tempdir().expect("temp dir");
    let pid = std::process::id();
    let (mut script, mut serial, mut default) = (Vec::new(), Vec::new(), Vec::new());
    let mut sessions = Vec::new();
    for round in 0..rounds {
        let mut order = [Side::Script, Side::Serial, Side::Default, Side::Sessions];
        order.rotate_left(round % 4);
        let mut line = Vec::new();
        for side in order {
            match side {
                Side::Script => {
                    let p = format!("bp{pid}r{round}");
                    let took = run_script(tmp.path(), &p, n, 1);
                    bench::drop_databases(tmp.path(), &[&p], n);
                    script.push(took);
                    line.push(format!("script {:.2}s", took.as_secs_f64()));
                }
                Side::Sessions => {
                    let p = format!("bq{pid}r{round}");
                    let took = run_script(tmp.path(), &p, n, SESSIONS);
                    bench::drop_databases(tmp.path(), &[&p], n);
                    sessions.push(took);
                    line.push(format!(
                        "script in {SESSIONS} sessions {:.2}s",
                        took.as_secs_f64()
                    ));
                }
                Side::Serial | Side::Default => {
                    let (t, args): (_, &[&str]) = match side {
                        Side::Serial => (
                            format!("bs{pid}r{round}"),
                            &["apply", "--auto-approve", "--parallelism", "1"],
                        ),
                        _ => (format!("bd{pid}r{round}"), &["apply", "--auto-approve"]),
                    };
                    let root = tmp.path().join(&t);
                    let manifests = bench::write_databases(&root, n, &t, bench::PG_SERVER_YAML);
                    checkpoint();
                    let took = bench::time(
                        &mut bench::tend(
                            env!("CARGO_BIN_EXE_tend"),
                            &manifests,
                            &root.join("state"),
                            args,
                        ),
                        0,
                    );
                    bench::drop_databases(tmp.path(), &[&t], n);
                    let name = if matches!(side, Side::Serial) {
                        serial.push(took);
                        "--parallelism 1"
                    } else {
                        default.push(took);
                        "default parallelism"
                    };
                    line.push(format!("{name} {:.2}s", took.as_secs_f64()));
                }
            }
        }
        println!("apply_vs_psql: round {}: {}", round + 1, line.join(", "));
    }
    let (script, serial, default, sessions) = (
        bench::median(script),
        bench::median(serial),
        bench::median(default),
        bench::median(sessions),
    );
    let ratio = |d: Duration| d.as_secs_f64() / script.as_secs_f64();
    println!(
        "apply_vs_psql: {n} databases from empty, median of {rounds}: floor (psql script) {:.2}s; tend --parallelism 1 {:.2}s, ratio {:.2}× (target ≤ 1.1×); tend default parallelism {:.2}s, ratio {:.2}× (target ≤ 0.6×)",
        script.as_secs_f64(),
        serial.as_secs_f64(),
        ratio(serial),
        default.as_secs_f64(),
        ratio(default),
    );
    for (what, took, limit) in [
        ("--parallelism 1", serial, 1.1),
        ("default parallelism", default, 0.6),
    ] {
        bench::row(bench::Row {
            figure: &format!("4. apply of {n} databases from empty, {what}"),
            tend: format!("{:.2} s", took.as_secs_f64()),
            floor: format!("sequential psql script, {:.2} s", script.as_secs_f64()),
            ratio: Some(ratio(took)),
            goal: if limit > 1.0 {
                "≤ 1.1×"
            } else {
                "≤ 0.6×"
            },
            met: ratio(took) <= limit,
        });
    }
    bench::row(bench::Row {
        figure: &format!("4. reference: the psql script of {n} split over {SESSIONS} sessions"),
        tend: format!("(no tend) {:.2} s", sessions.as_secs_f64()),
        floor: format!("sequential psql script, {:.2} s", script.as_secs_f64()),
        ratio: Some(ratio(sessions)),
        goal: "what this server gives to concurrency",
        met: true,
    });
}

/// tend's default `--parallelism`.
const SESSIONS: usize = 10;

/// The floor: the same statements from one psql session (or `sessions` at once, each taking
/// every `sessions`-th database), verifiers computed before timing starts. Returns its wall
/// time.
fn run_script(dir: &Path, p: &str, n: usize, sessions: usize) -> Duration {
    let mut sql = vec![String::new(); sessions];
    for i in 0..n {
        let sql = &mut sql[i % sessions];
        let verifier = postgres_protocol::password::scram_sha_256(format!("pw-{p}-{i}").as_bytes());
        sql.push_str(&format!(
            "CREATE ROLE {p}_user_{i} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '{verifier}';\nCREATE DATABASE {p}_org_{i} OWNER {p}_user_{i};\nREVOKE ALL ON DATABASE {p}_org_{i} FROM PUBLIC;\n"
        ));
    }
    let scripts: Vec<_> = sql
        .iter()
        .enumerate()
        .map(|(k, sql)| {
            let script = dir.join(format!("{p}-{k}.sql"));
            std::fs::write(&script, sql).expect("write script");
            script
        })
        .collect();
    checkpoint();
    let start = std::time::Instant::now();
    let running: Vec<_> = scripts
        .iter()
        .map(|script| {
            Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f"])
                .arg(script)
                .spawn()
                .expect("start psql")
        })
        .collect();
    for mut child in running {
        assert!(
            child.wait().expect("wait for psql").success(),
            "psql failed"
        );
    }
    start.elapsed()
}

/// Start each timed step from a clean checkpoint with the disk caught up (see `tenants`). Not
/// timed.
fn checkpoint() {
    bench::time(
        Command::new("psql").args(["-X", "-q", "-d", "postgres", "-c", "CHECKPOINT"]),
        0,
    );
    bench::time(&mut Command::new("sync"), 0);
}
