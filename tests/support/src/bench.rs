//! Shared bench helpers: timing the real binary, peak RSS of children, and a workspace of
//! generated manifests. Benches run in full with `cargo bench`; under `cargo test` (no
//! `--bench` flag) they run a small smoke size so the bench code itself stays tested.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// True when run by `cargo bench` rather than as a smoke test under `cargo test`.
pub fn full() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Peak resident set size of the largest waited-for child so far, in MiB.
pub fn children_max_rss_mib() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    if rc != 0 {
        return f64::NAN;
    }
    usage.ru_maxrss as f64 / 1024.0
}

/// Run a command, panic unless it exits with `code`, return the wall time.
pub fn time(cmd: &mut Command, code: i32) -> Duration {
    let start = Instant::now();
    let out = cmd.output().expect("run command");
    let elapsed = start.elapsed();
    assert_eq!(
        out.status.code(),
        Some(code),
        "{cmd:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A `tend` command on a workspace.
pub fn tend(manifests: &Path, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tend"));
    c.arg("--manifests")
        .arg(manifests)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("NO_COLOR", "1");
    c
}

/// Manifests for `n` databases in files of 100 documents, plus a credential whose password comes
/// from a 0600 file, so no environment is needed. Returns the manifests dir.
pub fn write_databases(root: &Path, n: usize, prefix: &str, server_yaml: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = root.join("manifests");
    std::fs::create_dir_all(&dir).expect("mkdir");
    std::fs::write(dir.join("server.yaml"), server_yaml).expect("write");
    let pw = dir.join("admin.password");
    if !pw.exists() {
        std::fs::write(&pw, "bench-admin-password\n").expect("write");
    }
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for chunk in 0..n.div_ceil(100) {
        let mut text = String::new();
        for i in chunk * 100..((chunk + 1) * 100).min(n) {
            text.push_str(&format!(
                "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: t{i}}}\nspec:\n  server: main\n  database: {prefix}_org_{i}\n  owner: {prefix}_user_{i}\n"
            ));
        }
        std::fs::write(dir.join(format!("tenants-{chunk:03}.yaml")), text).expect("write");
    }
    dir
}
