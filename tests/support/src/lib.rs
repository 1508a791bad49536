//! Test support shared by the integration tests (and, in [`bench`], the benches): a temporary
//! workspace (manifests + state dirs) with a builder that runs the real `tend` binary in it,
//! assertions on a run's output, and the PostgreSQL connection that `scripts/test` provides
//! through the PG* variables. A test that needs PostgreSQL panics when it is missing: it never
//! skips. Must not know tend's internals: it drives the binary and the server, nothing else.

pub mod bench;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Workspace {
    /// The `tend` binary under test.
    pub tend: PathBuf,
    pub dir: tempfile::TempDir,
    pub manifests: PathBuf,
    pub state: PathBuf,
}

impl Workspace {
    /// A fresh workspace running `tend`, the test crate's `env!("CARGO_BIN_EXE_tend")` (Cargo sets
    /// it only for the package's own integration tests and benches, not for this library).
    pub fn new(tend: impl Into<PathBuf>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let manifests = dir.path().join("manifests");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        Workspace {
            tend: tend.into(),
            dir,
            manifests,
            state,
        }
    }

    pub fn write(&self, rel: &str, text: &str) {
        let p = self.manifests.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).expect("mkdir");
        }
        std::fs::write(p, text).expect("write manifest");
    }

    pub fn remove(&self, rel: &str) {
        std::fs::remove_file(self.manifests.join(rel)).expect("remove manifest");
    }

    /// A `tend` command with this workspace's dirs.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.tend);
        c.arg("--manifests")
            .arg(&self.manifests)
            .arg("--state")
            .arg(&self.state)
            .args(args)
            .stdin(Stdio::null())
            .env("NO_COLOR", "1");
        c
    }

    /// `tend ARGS` (one shell word list) with this workspace's dirs on a pseudo-terminal
    /// (util-linux `script`), so its stdout is a TTY. Colour is not turned off here.
    pub fn tty_cmd(&self, args: &str) -> Command {
        let cmd = format!(
            "{} --manifests {} --state {} {args}",
            self.tend.display(),
            self.manifests.display(),
            self.state.display()
        );
        let mut c = Command::new("script");
        c.args(["-qec", &cmd, "/dev/null"]);
        c
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().expect("run tend"))
    }

    /// `tend` with this workspace's dirs and `args` (split by the shell) on a pseudo-terminal
    /// (util-linux `script`), with `env` set, typing `answer` at the prompt.
    pub fn on_a_tty(&self, args: &str, answer: &str, env: &[(&str, &str)]) -> Run {
        use std::io::Write;
        let mut child = self
            .tty_cmd(args)
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(answer.as_bytes())
            .expect("type the answer");
        Run::from(child.wait_with_output().expect("wait"))
    }

    /// Every byte under the state dir, for leak checks.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        collect(&self.state, &mut out);
        out
    }
}

fn collect(p: &Path, out: &mut Vec<u8>) {
    if p.is_dir() {
        for e in std::fs::read_dir(p).expect("read dir").flatten() {
            collect(&e.path(), out);
        }
    } else if let Ok(b) = std::fs::read(p) {
        out.extend(b);
    }
}

/// A finished `tend` run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "tend failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
    /// The first word of stdout: for `runs list`, the newest run's id.
    pub fn first_word(&self) -> String {
        self.stdout
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The run's output (stdout or stderr) holds `needle`.
#[track_caller]
pub fn assert_has(r: &Run, needle: &str) {
    assert!(
        r.all().contains(needle),
        "expected {needle:?} in:\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

/// The run's output (stdout and stderr) lacks `needle`.
#[track_caller]
pub fn assert_lacks(r: &Run, needle: &str) {
    assert!(
        !r.all().contains(needle),
        "did not expect {needle:?} in:\nstdout:\n{}\nstderr:\n{}",
        r.stdout,
        r.stderr
    );
}

/// Some line holds every part, in order (plan fields are padded to a common width).
#[track_caller]
pub fn assert_line(r: &Run, parts: &[&str]) {
    let all = r.all();
    let found = all.lines().any(|l| {
        let mut rest = l;
        parts.iter().all(|p| match rest.find(p) {
            Some(i) => {
                rest = &rest[i + p.len()..];
                true
            }
            None => false,
        })
    });
    assert!(found, "expected a line with {parts:?} in:\n{all}");
}

/// The PostgreSQL server the tests run against.
pub struct Pg {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

/// The server from PG* (set by `scripts/test` through pg_virtualenv). Panics when missing.
pub fn pg() -> Pg {
    let var = |k: &str| {
        std::env::var(k).unwrap_or_else(|_| {
            panic!(
                "{k} is not set: these tests need a real PostgreSQL; run them through scripts/test"
            )
        })
    };
    Pg {
        host: var("PGHOST"),
        port: var("PGPORT").parse().expect("PGPORT is a port"),
        user: var("PGUSER"),
        password: var("PGPASSWORD"),
    }
}

impl Pg {
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        db: &str,
    ) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(db);
        let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// The server as a connection URL to database `db` (user and password percent-encoded),
    /// for `--state postgres://…`.
    pub fn url(&self, db: &str) -> String {
        let enc = |s: &str| {
            s.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        format!(
            "postgres://{}:{}@{}:{}/{db}?sslmode=disable",
            enc(&self.user),
            enc(&self.password),
            self.host,
            self.port
        )
    }

    pub async fn admin(&self) -> tokio_postgres::Client {
        self.connect_as(&self.user, &self.password, "postgres")
            .await
            .expect("admin connection")
    }
}

/// Whether a role (`kind == "role"`) or a database exists on the test server.
pub async fn exists(kind: &str, name: &str) -> bool {
    let q = match kind {
        "role" => "SELECT count(*) FROM pg_roles WHERE rolname = $1",
        _ => "SELECT count(*) FROM pg_database WHERE datname = $1",
    };
    let n: i64 = pg()
        .admin()
        .await
        .query_one(q, &[&name])
        .await
        .expect("query")
        .get(0);
    n == 1
}

/// The owner of a database on the test server.
pub async fn owner_of(db: &str) -> String {
    pg().admin()
        .await
        .query_one(
            "SELECT pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = $1",
            &[&db],
        )
        .await
        .expect("owner")
        .get(0)
}

/// A name unique to this process and call, for objects on the shared server.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The credential + server manifests pointing at the test server.
pub fn server_yaml() -> String {
    "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg-admin}\nspec:\n  provider: postgres\n  data:\n    host: {fromEnv: PGHOST}\n    port: {fromEnv: PGPORT}\n    user: {fromEnv: PGUSER}\n    password: {fromEnv: PGPASSWORD}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: disable}\n".to_owned()
}

/// A PostgresDatabase manifest.
pub fn database_yaml(name: &str, database: &str, owner: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: {name}}}\nspec:\n  server: main\n  database: {database}\n  owner: {owner}\n{extra}"
    )
}
