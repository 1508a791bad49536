//! Manifest saved → apply started, through the running daemon: p50 and p99 over 100 edits
//! (3 under `cargo test`). Each edit changes one database's connection limit; the clock stops
//! when the daemon logs that the update started. Target (issue 6): p50 ≤ 300 ms (the debounce
//! alone is 200 ms). Needs PG* (run through scripts/bench).

use tend_test_support::bench;

use std::time::{Duration, Instant};

fn main() {
    let edits = if bench::full() { 100 } else { 3 };
    bench::require_pg();
    let tmp = tempfile::tempdir().expect("temp dir");
    let prefix = format!("bl{}", std::process::id());
    let manifests = bench::write_databases(tmp.path(), 1, &prefix, bench::PG_SERVER_YAML);
    let state = tmp.path().join("state");
    let db = |limit: u32| {
        format!(
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: t0}}\nspec:\n  server: main\n  database: {prefix}_org_0\n  owner: {prefix}_user_0\n  connection_limit: {limit}\n"
        )
    };
    let file = manifests.join("tenants-000.yaml");
    std::fs::write(&file, db(1)).expect("write");
    let log_path = tmp.path().join("daemon.log");
    let daemon = bench::Daemon::start(env!("CARGO_BIN_EXE_tend"), &manifests, &state, &log_path);
    let wait_for = |needle: &str, n: usize| daemon.wait_for(needle, n, Duration::from_secs(30));
    wait_for("apply complete", 1);
    let mut latencies = Vec::new();
    for i in 0..edits {
        std::thread::sleep(Duration::from_millis(300));
        let start = Instant::now();
        std::fs::write(&file, db(2 + i as u32)).expect("edit");
        wait_for("PostgresDatabase.t0: Modifying...", i + 1);
        latencies.push(start.elapsed());
        wait_for("apply complete", i + 2);
    }
    drop(daemon);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "daemon_latency: {edits} edits, save → apply started: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p50 ≤ 300 ms)",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    bench::drop_databases(tmp.path(), &[&prefix], 1);
}
