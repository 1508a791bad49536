//! Daemon memory over time: `tend daemon` holding 10,000 resources (9,980 NomadJobs against the
//! Nomad double, 20 PostgresDatabases against the real PostgreSQL) through an hour of resyncs
//! with refresh, its resident set sampled from /proc. Target (issue 6): ≤ 100 MB and no growth.
//!
//! A real hour by default; `BENCH_RSS_SECS` shortens it and `BENCH_RSS_RESYNC` sets the resync
//! interval (default 1m: 5× the daemon's default rate, so an hour is 60 full refreshes). Under
//! `cargo test` it runs 40 resources for a few seconds. Needs PG* (run through scripts/bench).

use tend_test_support::bench;

use std::process::Stdio;
use std::time::{Duration, Instant};

const DATABASES: usize = 20;

fn main() {
    let full = bench::full();
    let (jobs, databases) = if full {
        (10_000 - DATABASES, DATABASES)
    } else {
        (38, 2)
    };
    let secs = |var: &str, default: u64| {
        std::env::var(var)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let duration = Duration::from_secs(if full {
        secs("BENCH_RSS_SECS", 3600)
    } else {
        4
    });
    let resync = if full {
        std::env::var("BENCH_RSS_RESYNC").unwrap_or_else(|_| "1m".into())
    } else {
        "1s".into()
    };
    let sample_every = if full {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(250)
    };
    bench::require_pg();

    let double = tend_nomad_double::NomadDouble::start();
    let tmp = tempfile::tempdir().expect("temp dir");
    let prefix = format!("br{}", std::process::id());
    let server = format!(
        "{}---\napiVersion: tend/v1\nkind: Credential\nmetadata: {{name: nomad}}\nspec: {{provider: nomad, data: {{address: \"{}\"}}}}\n",
        bench::PG_SERVER_YAML,
        double.address()
    );
    let manifests = bench::write_databases(tmp.path(), databases, &prefix, &server);
    for chunk in 0..jobs.div_ceil(100) {
        let mut text = String::new();
        for i in chunk * 100..((chunk + 1) * 100).min(jobs) {
            text.push_str(&format!(
                "---\napiVersion: tend/v1\nkind: NomadJob\nmetadata: {{name: job{i}}}\nspec:\n  job:\n    Datacenters: [dc1]\n    TaskGroups:\n      - Name: app\n        Count: 1\n        Tasks:\n          - Name: app\n            Driver: docker\n            Config: {{image: \"app:1.{i}\"}}\n            Env: {{LOG_LEVEL: info}}\n"
            ));
        }
        std::fs::write(manifests.join(format!("jobs-{chunk:03}.yaml")), text).expect("write");
    }
    let state = tmp.path().join("state");
    let log_path = tmp.path().join("daemon.log");
    let started = Instant::now();
    let mut child = bench::tend(
        env!("CARGO_BIN_EXE_tend"),
        &manifests,
        &state,
        &["daemon", "--resync", &resync],
    )
    .stderr(Stdio::from(std::fs::File::create(&log_path).expect("log")))
    .stdout(Stdio::null())
    .spawn()
    .expect("daemon");
    let pid = child.id();
    let count = |needle: &str| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .matches(needle)
            .count()
    };
    // VmRSS: resident now; VmHWM: the peak since start or since the last reset.
    let proc_mib = |field: &str| -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    let rss_mib = || proc_mib("VmRSS:");
    let deadline = started + Duration::from_secs(1800);
    while count("apply complete") < 1 {
        assert!(
            Instant::now() < deadline,
            "the first apply did not finish:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the daemon exited:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let converged = started.elapsed();
    let apply_peak = proc_mib("VmHWM:");
    // Reset the high-water mark (writing 5 to clear_refs sets it to the current RSS) once the
    // first resync is over and the daemon has handed the apply's memory back, so the peak
    // reported at the end is the resyncs' alone.
    while count("no changes") < 1 {
        assert!(
            Instant::now() < deadline,
            "no resync finished:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset the RSS high-water mark");
    assert_eq!(
        double.count("PUT", "/v1/jobs"),
        jobs,
        "one register per job"
    );

    // (seconds since convergence, RSS MiB, resyncs finished so far)
    let mut samples: Vec<(f64, f64, usize)> = Vec::new();
    let watch = Instant::now();
    while watch.elapsed() < duration {
        std::thread::sleep(sample_every);
        assert!(
            child.try_wait().expect("wait").is_none(),
            "the daemon exited:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        samples.push((
            watch.elapsed().as_secs_f64(),
            rss_mib(),
            count("no changes"),
        ));
    }
    let resync_peak = proc_mib("VmHWM:");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let resyncs = samples.last().map_or(0, |s| s.2);
    assert!(resyncs >= 1, "no resync finished:\n{log}");
    assert_eq!(
        double.count("PUT", "/v1/jobs"),
        jobs,
        "resyncs found drift where there was none"
    );

    // Growth: mean RSS over the first and the last quarter of the samples taken after the
    // first resync finished (the first refresh fills the pools and caches for good).
    let settled: Vec<f64> = samples.iter().filter(|s| s.2 >= 1).map(|s| s.1).collect();
    let quarter = (settled.len() / 4).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let first = mean(&settled[..quarter]);
    let last = mean(&settled[settled.len() - quarter..]);
    println!(
        "daemon_rss: {} resources ({jobs} Nomad jobs, {databases} databases), converged in {:.1}s (peak RSS {apply_peak:.1} MiB); {:.0} min of resyncs every {resync} ({resyncs} resyncs): mean RSS in the first → last quarter {first:.1} → {last:.1} MiB ({:+.1}%), peak during resyncs {resync_peak:.1} MiB (target ≤ 100 MB, no growth)",
        jobs + databases,
        converged.as_secs_f64(),
        duration.as_secs_f64() / 60.0,
        (last - first) / first * 100.0
    );
    if let Ok(path) = std::env::var("BENCH_RSS_SAMPLES") {
        let text: String = samples
            .iter()
            .map(|(t, rss, n)| format!("{t:.0}\t{rss:.1}\t{n}\n"))
            .collect();
        std::fs::write(&path, format!("seconds\trss_mib\tresyncs\n{text}")).expect("samples");
    }

    bench::drop_databases(tmp.path(), &[&prefix], databases);
}
