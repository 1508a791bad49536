//! Apply of N new databases (200 under `cargo bench`) against a real PostgreSQL, beside a minimal
//! psql script that runs the same statements (CREATE ROLE with a SCRAM verifier, CREATE DATABASE
//! … OWNER, REVOKE ALL … FROM PUBLIC) in one session. Target (issue 2): tend ≤ 1.1× the script.
//! Needs PG* in the environment (run through scripts/bench).

mod support;

use std::process::Command;

fn main() {
    let (n, rounds) = if support::full() { (200, 3) } else { (5, 1) };
    for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"] {
        assert!(
            std::env::var(k).is_ok(),
            "{k} is not set: run through scripts/bench (or scripts/test)"
        );
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let server = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data:\n    host: {fromEnv: PGHOST}\n    port: {fromEnv: PGPORT}\n    user: {fromEnv: PGUSER}\n    password: {fromEnv: PGPASSWORD}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: disable}\n";
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
        psql_times.push(support::time(
            Command::new("psql")
                .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f"])
                .arg(&script),
            0,
        ));
        prefixes.push(p);

        let t = format!("bt{pid}r{round}");
        let root = tmp.path().join(&t);
        let manifests = support::write_databases(&root, n, &t, server);
        tend_times.push(support::time(
            &mut support::tend(
                &manifests,
                &root.join("state"),
                &["apply", "--auto-approve"],
            ),
            0,
        ));
        prefixes.push(t);
    }
    let (psql, tend) = (support::median(psql_times), support::median(tend_times));
    println!(
        "apply_vs_psql: {n} databases, median of {rounds}: psql script {:.2}s, tend apply {:.2}s, ratio {:.2}× (target ≤ 1.1×)",
        psql.as_secs_f64(),
        tend.as_secs_f64(),
        tend.as_secs_f64() / psql.as_secs_f64()
    );
    // Clean up (not timed).
    let mut drop = String::new();
    for p in &prefixes {
        for i in 0..n {
            drop.push_str(&format!(
                "DROP DATABASE IF EXISTS {p}_org_{i};\nDROP ROLE IF EXISTS {p}_user_{i};\n"
            ));
        }
    }
    let cleanup = tmp.path().join("cleanup.sql");
    std::fs::write(&cleanup, drop).expect("write cleanup");
    support::time(
        Command::new("psql")
            .args(["-X", "-q", "-d", "postgres", "-f"])
            .arg(&cleanup),
        0,
    );
}
