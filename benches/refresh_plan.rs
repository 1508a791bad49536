//! Plan with refresh of N converged databases (500 under `cargo bench`) against a real
//! PostgreSQL, beside the floor: one catalog SELECT over `pg_database` ⋈ `pg_authid` by psql,
//! which reads everything such a refresh needs. Issue 15 goal 1: tend ≤ 2× the floor.
//! Needs PG* in the environment (run through scripts/bench).

use std::process::Command;

use tend_test_support::bench;

/// What one refresh must know of every tenant, in one statement.
const FLOOR_SQL: &str = "SELECT d.datname, a.rolname, a.rolcanlogin, a.rolconnlimit, \
     a.rolpassword, d.datconnlimit, has_database_privilege('public', d.oid, 'CONNECT') \
     FROM pg_database d JOIN pg_authid a ON a.oid = d.datdba";

fn main() {
    let (n, rounds) = if bench::full() { (500, 7) } else { (5, 1) };
    bench::require_pg();
    let tmp = tempfile::tempdir().expect("temp dir");
    let prefix = format!("rp{}", std::process::id());
    let root = tmp.path().join(&prefix);
    let manifests = bench::write_databases(&root, n, &prefix, bench::PG_SERVER_YAML);
    let state = root.join("state");
    let tend = env!("CARGO_BIN_EXE_tend");
    bench::time(
        &mut bench::tend(tend, &manifests, &state, &["apply", "--auto-approve"]),
        0,
    );

    // Alternated, so load on the machine hits both alike.
    let (mut floor, mut plan) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        floor.push(bench::time(
            Command::new("psql").args([
                "-X",
                "-q",
                "-d",
                "postgres",
                "-o",
                "/dev/null",
                "-c",
                FLOOR_SQL,
            ]),
            0,
        ));
        // `--detailed-exitcode` 0: converged, nothing to change.
        plan.push(bench::time(
            &mut bench::tend(tend, &manifests, &state, &["plan", "--detailed-exitcode"]),
            0,
        ));
    }
    let (floor, plan) = (bench::median(floor), bench::median(plan));
    println!(
        "refresh_plan: {n} converged databases, median of {rounds}: catalog SELECT (psql) {:.3}s, tend plan {:.3}s, ratio {:.2}× (target ≤ 2×)",
        floor.as_secs_f64(),
        plan.as_secs_f64(),
        plan.as_secs_f64() / floor.as_secs_f64()
    );
    let ratio = plan.as_secs_f64() / floor.as_secs_f64();
    bench::row(bench::Row {
        figure: &format!("1. plan with refresh, {n} converged databases"),
        tend: format!("{:.3} s", plan.as_secs_f64()),
        floor: format!("one catalog SELECT by psql, {:.3} s", floor.as_secs_f64()),
        ratio: Some(ratio),
        goal: "≤ 2×",
        met: ratio <= 2.0,
    });
    bench::drop_databases(tmp.path(), &[prefix], n);
}
