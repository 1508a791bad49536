//! `tend state import`, `state export --include-secrets` and `state list` of many records
//! (issue 15 goal 5: each ≤ 150 MB peak at 50,000; importing the same data again does not grow
//! the store), beside the no-op plan of the same state as the floor the issue measured them
//! against. `BENCH_SIZE` overrides the 50,000; with `BENCH_KEEP` set the state, its export and
//! the imported store are kept.

#[path = "common/seed.rs"]
mod common;

use std::process::Stdio;

use tend_test_support::bench;

fn main() {
    let n: usize = std::env::var("BENCH_SIZE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if bench::full() { 50_000 } else { 200 });
    let tend = env!("CARGO_BIN_EXE_tend");
    let tmp = tempfile::tempdir().expect("temp dir");
    let (manifests, state) = common::seed(tmp.path(), n);
    let mib = |b: u64| b as f64 / 1024.0 / 1024.0;

    let (plan_t, plan_rss) = bench::measure(
        &bench::tend(tend, &manifests, &state, &["plan", "--refresh=false"]),
        Stdio::null(),
        0,
    );
    let (list_t, list_rss) = bench::measure(
        &bench::tend(tend, &manifests, &state, &["state", "list"]),
        Stdio::null(),
        0,
    );
    let doc = tmp.path().join("export.json");
    let (export_t, export_rss) = bench::measure(
        &bench::tend(
            tend,
            &manifests,
            &state,
            &["state", "export", "--include-secrets"],
        ),
        std::fs::File::create(&doc).expect("export file"),
        0,
    );
    // Into a fresh store under the same key, then the same document again.
    let fresh = tmp.path().join("fresh");
    std::fs::create_dir_all(&fresh).expect("mkdir");
    std::fs::copy(state.join("tend.key"), fresh.join("tend.key")).expect("key");
    let import = |dir: &std::path::Path| {
        bench::measure(
            &bench::tend(
                tend,
                &manifests,
                dir,
                &["state", "import", doc.to_str().expect("utf-8 path")],
            ),
            Stdio::null(),
            0,
        )
    };
    let (import_t, import_rss) = import(&fresh);
    let db_first = bench::dir_bytes(&fresh.join("db"));
    let (again_t, again_rss) = import(&fresh);
    let db_again = bench::dir_bytes(&fresh.join("db"));
    let secs = |d: std::time::Duration| d.as_secs_f64();
    println!(
        "state_cmds: {n} records ({:.0} MiB export document); floor: plan --refresh=false {:.2}s, {plan_rss:.0} MiB",
        mib(std::fs::metadata(&doc).map(|m| m.len()).unwrap_or(0)),
        secs(plan_t)
    );
    for (what, t, rss) in [
        ("state list", list_t, list_rss),
        ("state export --include-secrets", export_t, export_rss),
        ("state import (fresh store)", import_t, import_rss),
        ("state import (same again)", again_t, again_rss),
    ] {
        println!(
            "state_cmds: {what}: {:.2}s, peak RSS {rss:.0} MiB, {:.2}× the plan's (goal 5: ≤ 150 MB)",
            secs(t),
            rss / plan_rss
        );
    }
    let mb = |rss: f64| rss * 1024.0 * 1024.0 / 1e6;
    for (what, t, rss) in [
        ("state import", import_t, import_rss),
        ("state export --include-secrets", export_t, export_rss),
        ("state list", list_t, list_rss),
    ] {
        bench::row(bench::Row {
            figure: &format!("5. `{what}`, {n} records"),
            tend: format!("{:.2} s, {:.0} MB peak", secs(t), mb(rss)),
            floor: format!("the plan of the same state, {:.0} MB", mb(plan_rss)),
            ratio: Some(rss / plan_rss),
            goal: "≤ 150 MB",
            met: mb(rss) <= 150.0,
        });
    }
    bench::row(bench::Row {
        figure: &format!("5. `state import` of the same {n} records again"),
        tend: format!(
            "store {:.1} → {:.1} MB, {:.0} MB peak",
            db_first as f64 / 1e6,
            db_again as f64 / 1e6,
            mb(again_rss)
        ),
        floor: "the store before it".to_owned(),
        ratio: None,
        goal: "no growth (≤ 1 % or 256 KB: sled logs the new serial), ≤ 150 MB",
        met: db_again <= db_first + (db_first / 100).max(256 * 1024) && mb(again_rss) <= 150.0,
    });
    println!(
        "state_cmds: store after the first import {:.1} MiB, after the same again {:.1} MiB (goal 5: no growth)",
        mib(db_first),
        mib(db_again)
    );
    if std::env::var_os("BENCH_KEEP").is_some() {
        eprintln!("kept {}", tmp.keep().display());
    }
}
