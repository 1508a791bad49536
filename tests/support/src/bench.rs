//! Helpers shared by the benches in `benches/`: timing the real binary, peak RSS of children,
//! a workspace of generated manifests, the PostgreSQL they need. Benches run in full with
//! `cargo bench`; under `cargo test` (no `--bench` flag) they run a small smoke size so the
//! bench code itself stays tested. Must not print figures: each bench reports its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The credential (`pg`, from PG*) and server manifests for the bench PostgreSQL.
pub const PG_SERVER_YAML: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data:\n    host: {fromEnv: PGHOST}\n    port: {fromEnv: PGPORT}\n    user: {fromEnv: PGUSER}\n    password: {fromEnv: PGPASSWORD}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: disable}\n";

/// Panics unless PG* name the bench PostgreSQL (scripts/bench and scripts/test set them).
pub fn require_pg() {
    for k in ["PGHOST", "PGPORT", "PGUSER", "PGPASSWORD"] {
        assert!(
            std::env::var(k).is_ok(),
            "{k} is not set: run through scripts/bench (or scripts/test)"
        );
    }
}

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

/// A `tend` command on a workspace; `tend` is the bench's `env!("CARGO_BIN_EXE_tend")`.
pub fn tend(tend: &str, manifests: &Path, state: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(tend);
    c.arg("--manifests")
        .arg(manifests)
        .arg("--state")
        .arg(state)
        .args(args)
        .env("NO_COLOR", "1");
    c
}

/// `tend daemon --resync 1h` on a workspace, its log (stderr) in a file the bench watches.
pub struct Daemon {
    child: std::process::Child,
    log: PathBuf,
}

impl Daemon {
    pub fn start(tend_bin: &str, manifests: &Path, state: &Path, log: &Path) -> Daemon {
        let child = tend(tend_bin, manifests, state, &["daemon", "--resync", "1h"])
            .stderr(std::process::Stdio::from(
                std::fs::File::create(log).expect("log"),
            ))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("daemon");
        Daemon {
            child,
            log: log.to_owned(),
        }
    }

    /// How often `needle` appears in the log so far.
    pub fn count(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches(needle)
            .count()
    }

    /// Wait until `needle` appeared `n` times; panics after `limit`.
    pub fn wait_for(&self, needle: &str, n: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        while self.count(needle) < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle} #{n}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// One more database manifest in `dir`, named like [`write_databases`]' `i`-th (`t{i}`, database
/// `{prefix}_org_{i}`, role `{prefix}_user_{i}`), in a file of its own. Returns its name.
pub fn write_one(dir: &Path, i: usize, prefix: &str) -> String {
    std::fs::write(
        dir.join(format!("one-{i}.yaml")),
        format!(
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: t{i}}}\nspec:\n  server: main\n  database: {prefix}_org_{i}\n  owner: {prefix}_user_{i}\n"
        ),
    )
    .expect("write");
    format!("t{i}")
}

/// Drops the databases `{prefix}_org_{i}` and roles `{prefix}_user_{i}` (i < n) of each prefix
/// with psql, through a script written in `dir` (not timed).
pub fn drop_databases(dir: &Path, prefixes: &[impl AsRef<str>], n: usize) {
    let mut sql = String::new();
    for pre in prefixes {
        let pre = pre.as_ref();
        for i in 0..n {
            sql.push_str(&format!(
                "DROP DATABASE IF EXISTS {pre}_org_{i};\nDROP ROLE IF EXISTS {pre}_user_{i};\n"
            ));
        }
    }
    let cleanup = dir.join("cleanup.sql");
    std::fs::write(&cleanup, sql).expect("write cleanup");
    time(
        Command::new("psql")
            .args(["-X", "-q", "-d", "postgres", "-f"])
            .arg(&cleanup),
        0,
    );
}
