//! Running the `pulumi` CLI as a child process: arguments free of secrets, secrets only in the
//! child's environment or on its stdin, stdout and stderr streamed line by line into tracing
//! (redacted) with a tail kept for errors, and a deadline enforced the way Pulumi wants to be
//! stopped (reference §5 "Signals"): SIGINT first, so it cancels gracefully and releases its
//! lock, then SIGKILL to its whole process group after a grace period.
//!
//! Two paths stop a child. The [`Budget`] stops it before the action's timeout, so the error
//! can say what happened (cancelled after SIGINT, or killed). If the future running it is
//! dropped instead (the executor's timeout, the daemon's shutdown), [`ChildGuard`]'s `Drop`
//! sends SIGINT at once and SIGKILL after the grace period from a background task; if the
//! runtime itself goes away, tokio's `kill_on_drop` kills the child.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::stack::{EnvValue, OWNED_ENV};
use crate::value::{SENSITIVE, Sensitive};

/// Lines of output kept for error messages.
const TAIL: usize = 40;
/// The longest grace period between SIGINT and SIGKILL.
const MAX_GRACE: Duration = Duration::from_secs(60);
/// Secrets shorter than this are not redacted (they would blank out ordinary words).
const MIN_REDACT: usize = 4;
/// How long to wait for the output pipes to close after the child exited (a grandchild may
/// still hold them).
const DRAIN: Duration = Duration::from_secs(2);

/// Replaces every known secret in a line with `(sensitive)`.
#[derive(Clone, Default)]
pub struct Redactor {
    secrets: Vec<Sensitive>,
}

impl Redactor {
    pub fn new(secrets: Vec<Sensitive>) -> Self {
        let mut secrets: Vec<Sensitive> = secrets
            .into_iter()
            .filter(|s| s.expose().len() >= MIN_REDACT)
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.expose().len()));
        Redactor { secrets }
    }

    pub fn redact(&self, line: &str) -> String {
        let mut out = line.to_owned();
        for s in &self.secrets {
            if out.contains(s.expose()) {
                out = out.replace(s.expose(), SENSITIVE);
            }
        }
        out
    }
}

/// When to stop a child: SIGINT at `interrupt_at`, SIGKILL `grace` later. Both fall inside the
/// action's timeout, so the provider reports the stop before the executor gives up on it.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    pub timeout: Duration,
    pub interrupt_at: Instant,
    pub grace: Duration,
}

impl Budget {
    /// The last quarter of `timeout` (at most two minutes) is kept for stopping: SIGINT when it
    /// starts, SIGKILL half-way through it, the rest for reporting.
    pub fn starting_now(timeout: Duration) -> Budget {
        let reserve = (timeout / 4).min(MAX_GRACE * 2);
        Budget {
            timeout,
            interrupt_at: Instant::now() + timeout.saturating_sub(reserve),
            grace: (reserve / 2).min(MAX_GRACE),
        }
    }
}

/// How a stopped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Exited after SIGINT, within the grace period.
    Interrupted,
    /// Still running after the grace period: SIGKILL.
    Killed,
}

/// One command line. Arguments never hold secrets; `stdin` may.
pub struct Invocation {
    pub args: Vec<String>,
    pub stdin: Option<Sensitive>,
    /// Whether stdout may be logged (`stack output --show-secrets` is not, even redacted).
    pub log_stdout: bool,
    /// Render stdout lines (e.g. NDJSON engine events) before logging; `None` drops the line.
    pub render: Option<fn(&str) -> Option<String>>,
}

impl Invocation {
    pub fn new<S: AsRef<str>>(args: &[S]) -> Self {
        Invocation {
            args: args.iter().map(|a| a.as_ref().to_owned()).collect(),
            stdin: None,
            log_stdout: true,
            render: None,
        }
    }

    /// `pulumi up` for messages.
    pub fn label(&self) -> String {
        let words: Vec<&str> = self
            .args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .take(2)
            .map(String::as_str)
            .collect();
        format!("pulumi {}", words.join(" "))
    }
}

/// What a finished child left.
#[derive(Debug)]
pub struct Finished {
    /// The exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// All of stdout, unredacted (it is parsed, never logged as is).
    pub stdout: String,
    /// The last lines of stderr and (rendered) stdout, redacted.
    pub tail: Vec<String>,
}

impl Finished {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    pub fn tail_text(&self) -> String {
        self.tail.join("\n")
    }
}

/// Why a child did not finish on its own.
#[derive(Debug)]
pub enum RunError {
    /// The binary could not be started.
    Spawn(String),
    /// The budget ran out and the child was stopped.
    Stopped { stop: Stop, tail: Vec<String> },
}

/// Runs invocations of one binary for one resource.
pub struct Runner {
    pub binary: PathBuf,
    pub cwd: PathBuf,
    pub env: Vec<(String, EnvValue)>,
    pub redactor: Redactor,
    pub budget: Budget,
    /// The resource, for log lines.
    pub address: String,
}

impl Runner {
    /// Run one command to its end or until the budget stops it.
    pub async fn run(&self, inv: &Invocation) -> Result<Finished, RunError> {
        let label = inv.label();
        let mut cmd = Command::new(&self.binary);
        cmd.args(&inv.args)
            .current_dir(&self.cwd)
            .stdin(if inv.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Its own process group: a SIGKILL reaches the plugins Pulumi started too.
            .process_group(0);
        for k in OWNED_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in &self.env {
            cmd.env(k, v.expose());
        }
        tracing::debug!(address = %self.address, command = %inv.args.join(" "), "running pulumi");
        let mut child = cmd.spawn().map_err(|e| {
            RunError::Spawn(if e.kind() == std::io::ErrorKind::NotFound {
                format!(
                    "cannot run {}: not found (install the Pulumi CLI, or set TEND_PULUMI to its path)",
                    self.binary.display()
                )
            } else {
                format!("cannot run {}: {e}", self.binary.display())
            })
        })?;

        if let (Some(value), Some(mut stdin)) = (inv.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                // A child that exits without reading is not an error here: its exit code says.
                let _ = stdin.write_all(value.expose().as_bytes()).await;
                let _ = stdin.shutdown().await;
            });
        }
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL)));
        // Captured here, in the action's task: the readers below are spawned tasks.
        let echo = crate::provider::output_sink();
        let stdout_buf = Arc::new(Mutex::new(String::new()));
        let readers = {
            let out = child.stdout.take().map(|s| {
                let sink = Sink {
                    tail: Arc::clone(&tail),
                    redactor: self.redactor.clone(),
                    address: self.address.clone(),
                    label: label.clone(),
                    stream: "stdout",
                    log: inv.log_stdout,
                    render: inv.render,
                    keep: Some(Arc::clone(&stdout_buf)),
                    echo: echo.clone(),
                };
                tokio::spawn(sink.read(s))
            });
            let err = child.stderr.take().map(|s| {
                let sink = Sink {
                    tail: Arc::clone(&tail),
                    redactor: self.redactor.clone(),
                    address: self.address.clone(),
                    label: label.clone(),
                    stream: "stderr",
                    log: true,
                    render: None,
                    keep: None,
                    echo: echo.clone(),
                };
                tokio::spawn(sink.read(s))
            });
            [out, err]
        };

        let mut guard = ChildGuard::new(child, self.budget.grace, label.clone());
        let status = guard.wait_until(self.budget.interrupt_at).await;
        let outcome = match status {
            Waited::Exited(code) => Ok(code),
            Waited::Deadline => {
                let stop = guard.stop().await;
                tracing::warn!(address = %self.address, command = %label, ?stop, "stopped pulumi at the end of its time budget");
                Err(stop)
            }
        };
        drop(guard);
        for r in readers.into_iter().flatten() {
            let _ = tokio::time::timeout(DRAIN, r).await;
        }
        let tail: Vec<String> = tail
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        match outcome {
            Ok(code) => {
                let stdout = stdout_buf.lock().map(|s| s.clone()).unwrap_or_default();
                tracing::debug!(address = %self.address, command = %label, code = ?code, "pulumi exited");
                Ok(Finished { code, stdout, tail })
            }
            Err(stop) => Err(RunError::Stopped { stop, tail }),
        }
    }
}

/// Where one output stream goes.
struct Sink {
    tail: Arc<Mutex<VecDeque<String>>>,
    redactor: Redactor,
    address: String,
    label: String,
    stream: &'static str,
    log: bool,
    render: Option<fn(&str) -> Option<String>>,
    keep: Option<Arc<Mutex<String>>>,
    /// The run record's output and `tend apply`'s terminal.
    echo: Option<crate::provider::OutputSink>,
}

impl Sink {
    async fn read<R: tokio::io::AsyncRead + Unpin>(self, r: R) {
        let mut lines = BufReader::new(r).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(keep) = &self.keep
                && let Ok(mut k) = keep.lock()
            {
                k.push_str(&line);
                k.push('\n');
            }
            if !self.log {
                continue;
            }
            let shown = match self.render {
                Some(f) => f(&line),
                None => Some(line),
            };
            let Some(shown) = shown.filter(|l| !l.trim().is_empty()) else {
                continue;
            };
            let shown = self.redactor.redact(&shown);
            tracing::info!(address = %self.address, command = %self.label, stream = self.stream, "{shown}");
            if let Some(echo) = &self.echo {
                echo(&shown);
            }
            if let Ok(mut t) = self.tail.lock() {
                if t.len() == TAIL {
                    t.pop_front();
                }
                t.push_back(shown);
            }
        }
    }
}

enum Waited {
    Exited(Option<i32>),
    Deadline,
}

/// Owns a running child. Dropped while the child runs, it sends SIGINT and, from a background
/// task, SIGKILL after the grace period.
pub struct ChildGuard {
    child: Option<Child>,
    pid: Option<i32>,
    grace: Duration,
    label: String,
}

impl ChildGuard {
    fn new(child: Child, grace: Duration, label: String) -> Self {
        let pid = child.id().and_then(|p| i32::try_from(p).ok());
        ChildGuard {
            child: Some(child),
            pid,
            grace,
            label,
        }
    }

    async fn wait_until(&mut self, deadline: Instant) -> Waited {
        let Some(child) = self.child.as_mut() else {
            return Waited::Exited(None);
        };
        tokio::select! {
            status = child.wait() => {
                self.child = None;
                Waited::Exited(status.ok().and_then(|s| s.code()))
            }
            () = tokio::time::sleep_until(deadline) => Waited::Deadline,
        }
    }

    /// SIGINT, wait the grace period, then SIGKILL the process group.
    async fn stop(&mut self) -> Stop {
        let Some(mut child) = self.child.take() else {
            return Stop::Interrupted;
        };
        signal(self.pid, libc::SIGINT);
        match tokio::time::timeout(self.grace, child.wait()).await {
            Ok(_) => Stop::Interrupted,
            Err(_) => {
                kill_group(self.pid);
                let _ = child.start_kill();
                let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
                Stop::Killed
            }
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        let (pid, grace, label) = (self.pid, self.grace, self.label.clone());
        tracing::warn!(command = %label, pid = ?pid, "the action was cancelled while pulumi ran: sending SIGINT");
        signal(pid, libc::SIGINT);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    if tokio::time::timeout(grace, child.wait()).await.is_err() {
                        tracing::warn!(command = %label, pid = ?pid, grace = ?grace, "pulumi did not stop after SIGINT: sending SIGKILL");
                        kill_group(pid);
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                });
            }
            // No runtime: dropping the child kills it (kill_on_drop).
            Err(_) => kill_group(pid),
        }
    }
}

fn signal(pid: Option<i32>, sig: libc::c_int) {
    if let Some(pid) = pid.filter(|p| *p > 0) {
        // SAFETY: kill(2) with a pid this process spawned and has not reaped yet.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

fn kill_group(pid: Option<i32>) {
    if let Some(pid) = pid.filter(|p| *p > 0) {
        // SAFETY: the child leads its own process group (process_group(0)); -pid names it.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

/// The binary to run: `TEND_PULUMI` if set, else `pulumi` from PATH.
pub fn binary() -> PathBuf {
    std::env::var_os("TEND_PULUMI")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("pulumi"))
}

/// Make a path absolute against the current directory (`file://` URLs need one).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_redactor_replaces_every_secret_longest_first() {
        let r = Redactor::new(vec![
            Sensitive::new("abc"),
            Sensitive::new("token-1234"),
            Sensitive::new("token-1234-long"),
        ]);
        assert_eq!(
            r.redact("a token-1234-long and token-1234 abc"),
            "a (sensitive) and (sensitive) abc"
        );
    }

    #[test]
    fn the_budget_keeps_a_quarter_of_the_timeout_for_stopping() {
        let b = Budget::starting_now(Duration::from_secs(2));
        assert_eq!(b.grace, Duration::from_millis(250));
        let left = b.interrupt_at - Instant::now();
        assert!(left <= Duration::from_millis(1500) && left > Duration::from_millis(1400));
        let b = Budget::starting_now(Duration::from_secs(600));
        assert_eq!(b.grace, Duration::from_secs(60));
    }

    #[test]
    fn labels_name_the_command_not_its_arguments() {
        let inv = Invocation::new(&["stack", "output", "--stack", "s", "--json"]);
        assert_eq!(inv.label(), "pulumi stack output");
        let inv = Invocation::new(&["up", "--yes"]);
        assert_eq!(inv.label(), "pulumi up");
        let inv = Invocation::new(&["config", "set", "--stack", "s", "--secret", "apiKey"]);
        assert_eq!(inv.label(), "pulumi config set");
    }

    fn runner(script: &str, timeout: Duration) -> Runner {
        Runner {
            binary: PathBuf::from("/bin/sh"),
            cwd: std::env::temp_dir(),
            env: vec![(
                "SECRET_VAR".into(),
                EnvValue::Secret(Sensitive::new("s3cr3t-value")),
            )],
            redactor: Redactor::new(vec![Sensitive::new("s3cr3t-value")]),
            budget: Budget::starting_now(timeout),
            address: "Test.x".into(),
        }
        .with_script(script)
    }

    impl Runner {
        fn with_script(mut self, script: &str) -> Self {
            self.env
                .push(("SCRIPT".into(), EnvValue::Plain(script.into())));
            self
        }
    }

    fn sh() -> Invocation {
        Invocation::new(&["-c", "eval \"$SCRIPT\""])
    }

    #[tokio::test]
    async fn output_is_kept_and_secrets_are_redacted_in_the_tail() {
        let r = runner(
            "echo out-line; echo \"err $SECRET_VAR\" >&2; read v; echo \"got $v\"; exit 3",
            Duration::from_secs(20),
        );
        let mut inv = sh();
        inv.stdin = Some(Sensitive::new("from-stdin"));
        let f = r.run(&inv).await.expect("runs");
        assert_eq!(f.code, Some(3));
        assert!(f.stdout.contains("out-line"));
        assert!(f.stdout.contains("got from-stdin"));
        assert!(
            f.tail.iter().any(|l| l == "err (sensitive)"),
            "{:?}",
            f.tail
        );
        assert!(!f.tail_text().contains("s3cr3t-value"));
    }

    #[tokio::test]
    async fn a_child_that_ignores_sigint_is_killed_after_the_grace_period() {
        let r = runner("trap '' INT; sleep 30", Duration::from_millis(800));
        let started = std::time::Instant::now();
        match r.run(&sh()).await {
            Err(RunError::Stopped { stop, .. }) => assert_eq!(stop, Stop::Killed),
            other => panic!("expected a kill, got {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_child_that_honours_sigint_is_interrupted() {
        let r = runner(
            "trap 'echo cancelled; exit 1' INT; while :; do sleep 0.05; done",
            Duration::from_secs(2),
        );
        match r.run(&sh()).await {
            Err(RunError::Stopped { stop, tail }) => {
                assert_eq!(stop, Stop::Interrupted);
                assert!(tail.iter().any(|l| l == "cancelled"), "{tail:?}");
            }
            other => panic!("expected an interrupt, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_run_sends_sigint_then_sigkill() {
        let dir = tempfile::tempdir().expect("tempdir");
        let marks = dir.path().join("marks");
        let script = format!(
            "echo $$ > {m}.pid; trap 'echo int >> {m}' INT; while :; do sleep 0.05; done",
            m = marks.display()
        );
        let mut r = runner(&script, Duration::from_secs(60));
        r.budget.grace = Duration::from_millis(300);
        let dropped = tokio::time::timeout(Duration::from_millis(500), r.run(&sh())).await;
        assert!(dropped.is_err(), "the run is still going when dropped");
        tokio::time::sleep(Duration::from_millis(900)).await;
        let pid: i32 = std::fs::read_to_string(dir.path().join("marks.pid"))
            .expect("pid")
            .trim()
            .parse()
            .expect("a pid");
        assert!(
            std::fs::read_to_string(&marks).is_ok_and(|m| m.contains("int")),
            "SIGINT first"
        );
        // SAFETY: probing a pid with signal 0.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        let zombie =
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "));
        assert!(!alive || zombie, "SIGKILL after the grace period");
    }

    #[tokio::test]
    async fn a_missing_binary_says_how_to_point_at_one() {
        let mut r = runner("", Duration::from_secs(5));
        r.binary = PathBuf::from("/nonexistent/pulumi");
        match r.run(&sh()).await {
            Err(RunError::Spawn(m)) => assert!(m.contains("TEND_PULUMI"), "{m}"),
            other => panic!("expected a spawn error, got {other:?}"),
        }
    }
}
