//! Helpers shared by the benches in `benches/`: timing the real binary, peak RSS of children,
//! a workspace of generated manifests, the PostgreSQL they need. Benches run in full with
//! `cargo bench`; under `cargo test` (no `--bench` flag) they run a small smoke size so the
//! bench code itself stays tested. Must not print figures: each bench reports its own, and
//! records the rows of the goals table with [`row`] (scripts/bench prints them together).

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

/// One row of the table `scripts/bench` prints after its benches: a figure, tend's result,
/// the floor it is measured against (in the same run), their ratio, the goal and whether the
/// result meets it.
pub struct Row<'a> {
    pub figure: &'a str,
    pub tend: String,
    pub floor: String,
    /// `tend / floor`; `None` where the goal is absolute (a size, a growth).
    pub ratio: Option<f64>,
    pub goal: &'a str,
    pub met: bool,
}

/// Appends `row` to the file named by `TEND_BENCH_ROWS` (tab-separated, one row a line), which
/// scripts/bench sets and prints as a table at the end; without it (a bench run by hand, or a
/// smoke run under `cargo test`) nothing is recorded.
pub fn row(row: Row<'_>) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os("TEND_BENCH_ROWS") else {
        return;
    };
    let clean = |s: &str| s.replace(['\t', '\n'], " ");
    let line = format!(
        "{}\t{}\t{}\t{}\t{}\t{}\n",
        clean(row.figure),
        clean(&row.tend),
        clean(&row.floor),
        row.ratio.map_or("–".to_owned(), |r| format!("{r:.2}×")),
        clean(row.goal),
        if row.met { "met" } else { "**not met**" }
    );
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("TEND_BENCH_ROWS is writable");
    file.write_all(line.as_bytes()).expect("write a bench row");
}

/// Rounds of an alternating bench: `BENCH_ROUNDS`, else `default`, under `cargo bench`; one
/// in a smoke run.
pub fn rounds(default: usize) -> usize {
    match std::env::var("BENCH_ROUNDS") {
        Ok(v) if full() => v.parse().expect("BENCH_ROUNDS is a number"),
        _ if full() => default,
        _ => 1,
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

/// Run a command, panic unless it exits with `code`; its wall time and its own peak RSS in
/// MiB. The RSS is GNU time's (`/usr/bin/time -f %M`): a child spawned by this process
/// directly would report this process's RSS as its peak (a vfork shares the parent's memory
/// until exec, and Linux keeps that high-water mark), unlike [`children_max_rss_mib`]'s use
/// after small benches. Its stdout goes to `stdout`, its stderr is kept for the panic.
pub fn measure(
    cmd: &Command,
    stdout: impl Into<std::process::Stdio>,
    code: i32,
) -> (Duration, f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let report = dir.path().join("time");
    let errors = dir.path().join("stderr");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%M")
        .arg("-o")
        .arg(&report)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => timed.env(k, v),
            None => timed.env_remove(k),
        };
    }
    if let Some(d) = cmd.get_current_dir() {
        timed.current_dir(d);
    }
    let start = Instant::now();
    let status = {
        let mut child = timed
            .stdout(stdout)
            .stderr(std::fs::File::create(&errors).expect("stderr file"))
            .spawn()
            .expect("run /usr/bin/time");
        child.wait().expect("wait")
    };
    let elapsed = start.elapsed();
    if status.code() != Some(code) {
        panic!(
            "{cmd:?} exited {status}, not {code}:\n{}",
            std::fs::read_to_string(&errors).unwrap_or_default()
        );
    }
    let text = std::fs::read_to_string(&report).expect("time report");
    let kib: f64 = text
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .next_back()
        .expect("a %M line");
    (elapsed, kib / 1024.0)
}

/// The median of each: times and peak RSS of several [`measure`]d runs.
pub fn medians(runs: &[(Duration, f64)]) -> (Duration, f64) {
    let mut rss: Vec<f64> = runs.iter().map(|r| r.1).collect();
    rss.sort_by(f64::total_cmp);
    (
        median(runs.iter().map(|r| r.0).collect()),
        rss.get(rss.len() / 2).copied().unwrap_or(f64::NAN),
    )
}

/// Total size of the files under `dir`, in bytes.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            match entry.metadata() {
                Ok(m) if m.is_dir() => stack.push(entry.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
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
