//! Issue 15 goal 2: through a running daemon, one new database manifest saved → its creation
//! complete, with 500 converged databases managed beside it (5 and 3 rounds under
//! `cargo test`) against the same with nothing else managed. A file event refreshes only what
//! changed, so the ratio should stay ≤ 1.2×. Needs PG* (run through scripts/bench).

use tend_test_support::bench;

use std::path::Path;
use std::time::{Duration, Instant};

/// Median save → created of `rounds` new manifests, with `managed` converged databases.
fn run(tmp: &Path, tag: &str, managed: usize, rounds: usize) -> Duration {
    let prefix = format!("dn{}{tag}", std::process::id());
    let root = tmp.join(&prefix);
    let manifests = bench::write_databases(&root, managed, &prefix, bench::PG_SERVER_YAML);
    let state = root.join("state");
    let log_path = root.join("daemon.log");
    let daemon = bench::Daemon::start(env!("CARGO_BIN_EXE_tend"), &manifests, &state, &log_path);
    let wait_for = |needle: &str, n: usize| daemon.wait_for(needle, n, Duration::from_secs(300));
    // The start-up apply creates what is managed (or finds nothing to do).
    if managed > 0 {
        wait_for("apply complete", 1);
    } else {
        wait_for("no changes", 1);
    }
    let mut times = Vec::new();
    for r in 0..rounds {
        std::thread::sleep(Duration::from_millis(300));
        let i = managed + r;
        let start = Instant::now();
        let name = bench::write_one(&manifests, i, &prefix);
        wait_for(&format!("PostgresDatabase.{name}: Creation complete"), 1);
        times.push(start.elapsed());
    }
    drop(daemon);
    bench::drop_databases(&root, &[&prefix], managed + rounds);
    bench::median(times)
}

fn main() {
    let (managed, rounds) = if bench::full() { (500, 5) } else { (3, 1) };
    bench::require_pg();
    let tmp = tempfile::tempdir().expect("temp dir");
    let alone = run(tmp.path(), "a", 0, rounds);
    let beside = run(tmp.path(), "b", managed, rounds);
    println!(
        "daemon_new_manifest: new manifest saved → created, median of {rounds}: nothing else managed {:.0} ms, {managed} managed {:.0} ms, ratio {:.2}× (target ≤ 1.2×)",
        alone.as_secs_f64() * 1000.0,
        beside.as_secs_f64() * 1000.0,
        beside.as_secs_f64() / alone.as_secs_f64()
    );
    let ratio = beside.as_secs_f64() / alone.as_secs_f64();
    bench::row(bench::Row {
        figure: &format!("2. daemon: one new manifest saved → applied, {managed} managed"),
        tend: format!("{:.0} ms", beside.as_secs_f64() * 1000.0),
        floor: format!(
            "the same with none managed, {:.0} ms",
            alone.as_secs_f64() * 1000.0
        ),
        ratio: Some(ratio),
        goal: "≤ 1.2×",
        met: ratio <= 1.2,
    });
}
