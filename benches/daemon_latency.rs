//! Manifest saved → apply started, through the running daemon: p50 and p99 over 100 edits
//! (3 under `cargo test`). Each edit changes one database's connection limit; the clock stops
//! when the daemon logs that the update started. Target (issue 6): p50 ≤ 300 ms (the debounce
//! alone is 200 ms). Needs PG* (run through scripts/bench).

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

fn main() {
    let edits = if support::full() { 100 } else { 3 };
    for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"] {
        assert!(
            std::env::var(k).is_ok(),
            "{k} is not set: run through scripts/bench (or scripts/test)"
        );
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data:\n    host: {fromEnv: PGHOST}\n    port: {fromEnv: PGPORT}\n    user: {fromEnv: PGUSER}\n    password: {fromEnv: PGPASSWORD}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: disable}\n";
    let prefix = format!("bl{}", std::process::id());
    let manifests = support::write_databases(tmp.path(), 1, &prefix, server);
    let state = tmp.path().join("state");
    let db = |limit: u32| {
        format!(
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: t0}}\nspec:\n  server: main\n  database: {prefix}_org_0\n  owner: {prefix}_user_0\n  connection_limit: {limit}\n"
        )
    };
    let file = manifests.join("tenants-000.yaml");
    std::fs::write(&file, db(1)).expect("write");
    let log_path = tmp.path().join("daemon.log");
    let mut child = support::tend(&manifests, &state, &["daemon", "--resync", "1h"])
        .stderr(Stdio::from(std::fs::File::create(&log_path).expect("log")))
        .stdout(Stdio::null())
        .spawn()
        .expect("daemon");
    let count = |needle: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    let wait_for = |needle: &str, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle} #{n}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };
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
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "daemon_latency: {edits} edits, save → apply started: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms (target p50 ≤ 300 ms)",
        pct(0.5).as_secs_f64() * 1000.0,
        pct(0.99).as_secs_f64() * 1000.0,
        latencies[latencies.len() - 1].as_secs_f64() * 1000.0
    );
    let cleanup =
        format!("DROP DATABASE IF EXISTS {prefix}_org_0;\nDROP ROLE IF EXISTS {prefix}_user_0;\n");
    let sql = tmp.path().join("cleanup.sql");
    std::fs::write(&sql, cleanup).expect("write");
    support::time(
        std::process::Command::new("psql")
            .args(["-X", "-q", "-d", "postgres", "-f"])
            .arg(&sql),
        0,
    );
}
