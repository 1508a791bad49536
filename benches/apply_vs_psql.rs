//! Apply of N new databases (200 under `cargo bench`) against a real PostgreSQL, beside a minimal
//! psql script that runs the same statements (CREATE ROLE with a SCRAM verifier, CREATE DATABASE
//! … OWNER, REVOKE ALL … FROM PUBLIC) in one session. Target (issue 2): tend ≤ 1.1× the script.
//! Needs PG* in the environment (run through scripts/bench).

use tend_test_support::bench;

use std::process::Command;

fn main() {
    let (n, rounds) = if bench::full() { (200, 3) } else { (5, 1) };
    bench::require_pg();
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut prefixes = Vec::new();
    let (mut psql_times, mut tend_times) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let pid = std::process::id();
        // The script: verifiers are computed before timing starts.
        let p = format!("bp{pid}r{round}");
        let mut sql = String::new();
        for i in 0..n {
            let verifier =
                postgres_protocol::password::scram_sha_256(format!("pw-{p}-{i}").as_bytes());
            sql.push_str(&format!(
                "CREATE ROLE {p}_user_{i} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '{verifier}';\nCREATE DATABASE {p}_org_{i} OWNER {p}_user_{i};\nREVOKE ALL ON DATABASE {p}_org_{i} FROM PUBLIC;\n"
            ));
        }
        let script = tmp.path().join(format!("{p}.sql"));
        std::fs::write(&script, sql).expect("write script");
        psql_times.push(bench::time(
            Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f"])
                .arg(&script),
            0,
        ));
        prefixes.push(p);

        let t = format!("bt{pid}r{round}");
        let root = tmp.path().join(&t);
        let manifests = bench::write_databases(&root, n, &t, bench::PG_SERVER_YAML);
        tend_times.push(bench::time(
            &mut bench::tend(
                env!("CARGO_BIN_EXE_tend"),
                &manifests,
                &root.join("state"),
                &["apply", "--auto-approve"],
            ),
            0,
        ));
        prefixes.push(t);
    }
    let (psql, tend) = (bench::median(psql_times), bench::median(tend_times));
    println!(
        "apply_vs_psql: {n} databases, median of {rounds}: psql script {:.2}s, tend apply {:.2}s, ratio {:.2}× (target ≤ 1.1×)",
        psql.as_secs_f64(),
        tend.as_secs_f64(),
        tend.as_secs_f64() / psql.as_secs_f64()
    );
    // Clean up (not timed).
    bench::drop_databases(tmp.path(), &prefixes, n);
}
