//! 500 tenants (3 under `cargo test`) from empty to converged against a real PostgreSQL and the
//! Nomad double, beside a minimal psql script that creates the same roles and databases in one
//! session (target ≤ 1.1× the script); then the re-apply of the converged tenants with refresh
//! (target ≤ 2 s). Needs PG* (run through scripts/bench).

mod support;

#[path = "../tests/util/nomad.rs"]
mod nomad;

use std::process::Command;

fn main() {
    let n: usize = if support::full() { 500 } else { 3 };
    for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"] {
        assert!(
            std::env::var(k).is_ok(),
            "{k} is not set: run through scripts/bench (or scripts/test)"
        );
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let pid = std::process::id();

    // The script: verifiers computed before timing starts.
    let p = format!("tsp{pid}");
    let mut sql = String::new();
    for i in 0..n {
        let verifier = postgres_protocol::password::scram_sha_256(format!("pw-{p}-{i}").as_bytes());
        sql.push_str(&format!(
            "CREATE ROLE {p}_user_{i} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '{verifier}';\nCREATE DATABASE {p}_org_{i} OWNER {p}_user_{i};\nREVOKE ALL ON DATABASE {p}_org_{i} FROM PUBLIC;\n"
        ));
    }
    let script = tmp.path().join("script.sql");
    std::fs::write(&script, sql).expect("write script");
    let psql = support::time(
        Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f"])
            .arg(&script),
        0,
    );

    // tend: the same roles and databases, plus a Nomad job per tenant.
    let double = nomad::NomadDouble::start();
    let t = format!("tst{pid}");
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(manifests.join("tenants")).expect("mkdir");
    std::fs::write(
        manifests.join("base.yaml"),
        format!(
            "apiVersion: tend/v1\nkind: Credential\nmetadata: {{name: pg}}\nspec:\n  provider: postgres\n  data:\n    host: {{fromEnv: PGHOST}}\n    port: {{fromEnv: PGPORT}}\n    user: {{fromEnv: PGUSER}}\n    password: {{fromEnv: PGPASSWORD}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {{name: main}}\nspec: {{sslmode: disable}}\n---\napiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{}\"}}}}\n---\napiVersion: tend/v1\nkind: TenantTemplate\nmetadata: {{name: app}}\nspec:\n  server: main\n  database: \"{t}_org_{{org_id}}\"\n  owner: \"{t}_user_{{org_id}}\"\n  tiers: {{standard: {{count: 1, cpu: 100, memory_mb: 128}}}}\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - {{Name: app, Driver: docker, Config: {{image: \"app:{{version}}\"}}}}\n",
            double.address()
        ),
    )
    .expect("write");
    for chunk in 0..n.div_ceil(100) {
        let mut text = String::new();
        for i in chunk * 100..((chunk + 1) * 100).min(n) {
            text.push_str(&format!(
                "---\napiVersion: tend/v1\nkind: TenantInstance\nmetadata: {{name: t{i}}}\nspec: {{template: app, org_id: {i}, version: \"1.0\", tier: standard}}\n"
            ));
        }
        std::fs::write(manifests.join(format!("tenants/{chunk:03}.yaml")), text).expect("write");
    }
    let state = tmp.path().join("state");
    let apply = || support::tend(&manifests, &state, &["apply", "--auto-approve"]);
    let tend = support::time(&mut apply(), 0);
    let reapply = support::time(&mut apply(), 0);
    assert_eq!(
        double.count("PUT", "/v1/jobs"),
        n,
        "one register per tenant, none on re-apply"
    );

    println!(
        "tenants: {n} tenants from empty: tend {:.2}s (+{n} Nomad jobs) vs psql script {:.2}s (roles and databases only): {:.2}× (target ≤ 1.1×); re-apply with refresh {:.2}s (target ≤ 2 s)",
        tend.as_secs_f64(),
        psql.as_secs_f64(),
        tend.as_secs_f64() / psql.as_secs_f64(),
        reapply.as_secs_f64()
    );

    if std::env::var_os("BENCH_KEEP").is_some() {
        let path = tmp.keep();
        eprintln!(
            "kept {} (the double is gone: nomad refresh will fail)",
            path.display()
        );
        return;
    }
    let mut drop = String::new();
    for pre in [&p, &t] {
        for i in 0..n {
            drop.push_str(&format!(
                "DROP DATABASE IF EXISTS {pre}_org_{i};\nDROP ROLE IF EXISTS {pre}_user_{i};\n"
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
