//! 500 tenants (3 under `cargo test`) from empty to converged against a real PostgreSQL and the
//! Nomad double, beside a minimal psql script that creates the same roles and databases in one
//! session (target ≤ 1.1× the script); then the re-apply of the converged tenants with refresh
//! (target ≤ 2 s). Needs PG* (run through scripts/bench).
//!
//! Single runs swing by ±30 % on a shared disk, and whoever runs second pays for the first's
//! databases, so: three rounds (`BENCH_ROUNDS`) in which the script and tend take turns going
//! first, each timed step starting after a CHECKPOINT and a `sync` on a cluster without the
//! other's databases (dropped, untimed); medians are compared.

use tend_test_support::bench;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Round {
    psql: Duration,
    tend: Duration,
    reapply: Duration,
}

fn main() {
    let full = bench::full();
    let n: usize = if full { 500 } else { 3 };
    let rounds = bench::rounds(3);
    bench::require_pg();
    let tmp = tempfile::tempdir().expect("temp dir");
    let pid = std::process::id();
    let (p, t) = (format!("tsp{pid}"), format!("tst{pid}"));

    // The script: verifiers computed before timing starts.
    let mut sql = String::new();
    for i in 0..n {
        let verifier = postgres_protocol::password::scram_sha_256(format!("pw-{p}-{i}").as_bytes());
        sql.push_str(&format!(
            "CREATE ROLE {p}_user_{i} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT PASSWORD '{verifier}';\nCREATE DATABASE {p}_org_{i} OWNER {p}_user_{i};\nREVOKE ALL ON DATABASE {p}_org_{i} FROM PUBLIC;\n"
        ));
    }
    let script = tmp.path().join("script.sql");
    std::fs::write(&script, sql).expect("write script");

    // tend: the same roles and databases, plus a Nomad job per tenant.
    let manifests = tmp.path().join("manifests");
    std::fs::create_dir_all(manifests.join("tenants")).expect("mkdir");
    for chunk in 0..n.div_ceil(100) {
        let mut text = String::new();
        for i in chunk * 100..((chunk + 1) * 100).min(n) {
            text.push_str(&format!(
                "---\napiVersion: tend/v1\nkind: TenantInstance\nmetadata: {{name: t{i}}}\nspec: {{template: app, org_id: {i}, version: \"1.0\", tier: standard}}\n"
            ));
        }
        std::fs::write(manifests.join(format!("tenants/{chunk:03}.yaml")), text).expect("write");
    }

    let mut results = Vec::new();
    for round in 0..rounds {
        // The script, then its databases dropped again: each side creates its 500 databases
        // on a cluster without the other's (CREATE DATABASE slows as pg_database grows).
        let run_script = || {
            checkpoint();
            let took = bench::time(
                Command::new("psql")
                    .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres", "-f"])
                    .arg(&script),
                0,
            );
            bench::drop_databases(tmp.path(), &[&p], n);
            took
        };
        // A fresh Nomad double and state each round: tend starts from nothing.
        let double = tend_nomad_double::NomadDouble::start();
        write_base(&manifests, &t, &double.address());
        let state = tmp.path().join(format!("state-{round}"));
        let apply = || {
            checkpoint();
            bench::time(
                &mut bench::tend(
                    env!("CARGO_BIN_EXE_tend"),
                    &manifests,
                    &state,
                    &["apply", "--auto-approve"],
                ),
                0,
            )
        };
        // Who goes first alternates; tend's re-apply runs before its databases are dropped.
        let (psql, tend, reapply) = if round % 2 == 0 {
            let psql = run_script();
            let tend = apply();
            (psql, tend, apply())
        } else {
            let tend = apply();
            let reapply = apply();
            bench::drop_databases(tmp.path(), &[&t], n);
            (run_script(), tend, reapply)
        };
        assert_eq!(
            double.count("PUT", "/v1/jobs"),
            n,
            "one register per tenant, none on re-apply"
        );
        println!(
            "tenants: round {}: tend {:.2}s, psql script {:.2}s ({:.2}×), re-apply {:.2}s",
            round + 1,
            tend.as_secs_f64(),
            psql.as_secs_f64(),
            tend.as_secs_f64() / psql.as_secs_f64(),
            reapply.as_secs_f64()
        );
        results.push(Round {
            psql,
            tend,
            reapply,
        });
        if round + 1 == rounds && std::env::var_os("BENCH_KEEP").is_some() {
            let path = tmp.keep();
            eprintln!(
                "kept {} (the double is gone: nomad refresh will fail)",
                path.display()
            );
            return;
        }
        bench::drop_databases(tmp.path(), &[&t], n);
    }

    let median = |f: fn(&Round) -> Duration| bench::median(results.iter().map(f).collect());
    let (tend, psql, reapply) = (
        median(|r| r.tend),
        median(|r| r.psql),
        median(|r| r.reapply),
    );
    println!(
        "tenants: {n} tenants from empty, median of {rounds}: tend {:.2}s (+{n} Nomad jobs) vs psql script {:.2}s (roles and databases only): {:.2}× (target ≤ 1.1×); re-apply with refresh {:.2}s (target ≤ 2 s)",
        tend.as_secs_f64(),
        psql.as_secs_f64(),
        tend.as_secs_f64() / psql.as_secs_f64(),
        reapply.as_secs_f64()
    );
}

/// Credentials, server and template, pointing at this round's Nomad double.
fn write_base(manifests: &Path, t: &str, nomad: &str) {
    std::fs::write(
        manifests.join("base.yaml"),
        format!(
            "{}---\napiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{nomad}\"}}}}\n---\napiVersion: tend/v1\nkind: TenantTemplate\nmetadata: {{name: app}}\nspec:\n  server: main\n  database: \"{t}_org_{{org_id}}\"\n  owner: \"{t}_user_{{org_id}}\"\n  tiers: {{standard: {{count: 1, cpu: 100, memory_mb: 128}}}}\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Tasks:\n          - {{Name: app, Driver: docker, Config: {{image: \"app:{{version}}\"}}}}\n",
            bench::PG_SERVER_YAML
        ),
    )
    .expect("write");
}

/// Start each timed step from a clean checkpoint with the disk caught up, not in the middle of
/// the writeback of the gigabytes the previous step's CREATE DATABASEs left in the page cache
/// (the throwaway cluster runs with fsync off, so only `sync` flushes them). Not timed.
fn checkpoint() {
    bench::time(
        Command::new("psql").args(["-X", "-q", "-d", "postgres", "-c", "CHECKPOINT"]),
        0,
    );
    bench::time(&mut Command::new("sync"), 0);
}
