//! The pulumi provider: converges a `PulumiStack` (a program of the operator's) and a
//! `DigitalOceanDatabaseCluster` (tend's bundled program) by driving the `pulumi` CLI as a child
//! process, as shared/reference/pulumi-cli.md describes it (DESIGN §5, issue 4).
//!
//! Code map: `stack` computes what a run needs from values (stack reference, backend,
//! environment, passphrase, config entries); `cluster` maps the cluster kind onto the bundled
//! program; `parse` reads what the CLI prints; `command` runs the child (secrets only in its
//! environment or stdin, output streamed into tracing and redacted, SIGINT then SIGKILL at the
//! end of the time budget or when the action is dropped). This file holds the sequences:
//! - observe: `stack select` (a missing stack is Absent), `config set`, `preview --json
//!   --refresh` → plan details and drift. Never called before the first apply, so `tend plan`
//!   of a stack that never ran needs neither the CLI nor the cloud.
//! - apply: passphrase (saved through the [`Journal`] before first use), `stack select
//!   --create`, `config rm` of keys no longer declared, `config set`, then `up --yes
//!   --skip-preview` unless the recorded config digest is unchanged and a preview shows nothing
//!   to do, then `stack output --json` with and without `--show-secrets`.
//! - destroy: `destroy --yes`, `config rm` of the keys tend set, then `stack rm --yes
//!   --preserve-config` (the stack's config file may be the operator's); a stack already gone
//!   is success.
//!
//! Must not touch: the state store (only through the `Journal`), manifests, any stack but the
//! resource's own. Must not put a secret into an argument, a log line, an error, or an
//! [`Observed`] / [`Drift`] value.

mod cluster;
mod command;
pub mod model;
mod parse;
mod stack;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use rand::TryRngCore;
use rand::rngs::OsRng;

use crate::address::Kind;
use crate::provider::{
    Applied, Context, Desired, Drift, Journal, Observed, Provider, ProviderError,
};
use crate::state::Record;
use crate::value::{Sensitive, Value};

use command::{Budget, Finished, Invocation, Redactor, RunError, Runner, Stop};
use parse::Preview;
use stack::{Backend, ConfigEntry, EnvValue, Workspace};

/// Keys of the provider's private data in state.
const PRIVATE_PASSPHRASE: &str = "passphrase";
const PRIVATE_CONFIG_DIGEST: &str = "config_digest";
const PRIVATE_CONFIG_KEYS: &str = "config_keys";
const PRIVATE_TIMEOUT_MS: &str = "timeout_ms";

/// Keys of [`Observed::fields`].
const F_CHANGES: &str = "changes";

/// Concurrent pulumi processes (each starts plugins and holds hundreds of MB).
const CONCURRENCY: usize = 4;

/// Converges `PulumiStack` and `DigitalOceanDatabaseCluster` resources.
pub struct PulumiProvider {
    /// `<state>/pulumi`, absolute.
    root: PathBuf,
}

impl PulumiProvider {
    pub fn new(ctx: &Context) -> Self {
        PulumiProvider {
            root: command::absolute(&ctx.state_dir).join("pulumi"),
        }
    }

    /// A workspace for a resource, and the program text to write first (the cluster's). With
    /// `config` false (a spec with unknown values), no config is computed.
    fn prepare(
        &self,
        kind: Kind,
        name: &str,
        spec: &Value,
        connection: &Value,
        private: Option<&BTreeMap<String, Value>>,
        config: bool,
    ) -> Result<(Workspace, Option<String>), ProviderError> {
        let mut backend =
            Backend::from_credential(connection.get("pulumi"), &self.root.join("backend"));
        if let Some(dir) = &backend.dir {
            let meta = std::fs::read_to_string(dir.join(".pulumi").join("meta.yaml")).ok();
            let has_legacy_stacks = std::fs::read_dir(dir.join(".pulumi").join("stacks"))
                .map(|rd| {
                    rd.flatten().any(|e| {
                        e.path().is_file() && e.file_name().to_string_lossy().ends_with(".json")
                    })
                })
                .unwrap_or(false);
            backend.legacy = stack::legacy_layout(meta.as_deref(), has_legacy_stacks);
        }
        let pulumi_secret = |k: &str| match connection.get("pulumi").and_then(|p| p.get(k)) {
            Some(Value::Secret(s)) => Some(s.clone()),
            Some(Value::Str(s)) if !s.is_empty() => Some(Sensitive::new(s.clone())),
            _ => None,
        };
        // The generated passphrase a stack was created with wins: it is the one that works.
        let passphrase = match private.and_then(|p| p.get(PRIVATE_PASSPHRASE)) {
            Some(Value::Secret(s)) => Some(s.clone()),
            _ => pulumi_secret("passphrase"),
        };
        let mut env = stack::credential_vars(connection.get("credential"));
        let (program_dir, project, stack_name, entries, program) = match kind.as_str() {
            model::CLUSTER => {
                let dir = self
                    .root
                    .join("programs")
                    .join(cluster::PROGRAM_NAME)
                    .join(name);
                let (entries, program) = if config {
                    let c = cluster::Cluster::from_spec(spec)?;
                    if c.engine == "redis" {
                        tracing::warn!(resource = %name, "engine `redis` is an alias of `valkey`: DigitalOcean no longer creates Redis clusters, so the cluster runs Valkey; write `engine: valkey`");
                    }
                    (c.config(), Some(c.program()))
                } else if dir.join("Pulumi.yaml").exists() {
                    (Vec::new(), None)
                } else {
                    (
                        Vec::new(),
                        Some(cluster::render_program(cluster::PROGRAM, &[])),
                    )
                };
                (
                    dir,
                    cluster::PROGRAM_NAME.to_owned(),
                    name.to_owned(),
                    entries,
                    program,
                )
            }
            model::STACK => {
                let dir = connection
                    .get("program_dir")
                    .and_then(Value::as_str)
                    .map(|d| command::absolute(Path::new(d)))
                    .ok_or_else(|| {
                        ProviderError::permanent("the stack has no program directory")
                    })?;
                let project = read_project(&dir)?;
                let stack_name = spec
                    .get("stack")
                    .and_then(Value::as_str)
                    .ok_or_else(|| ProviderError::permanent("stack is required"))?
                    .to_owned();
                env.extend(stack::spec_vars(spec.get("env"))?);
                let entries = if config {
                    stack::config_entries(spec.get("config"))?
                } else {
                    Vec::new()
                };
                (dir, project, stack_name, entries, None)
            }
            other => {
                return Err(ProviderError::permanent(format!(
                    "the pulumi provider does not converge {other}"
                )));
            }
        };
        let stack = stack::stack_ref(&stack_name, &project, &backend)?;
        let ws = Workspace {
            program_dir,
            stack,
            backend,
            home: self.root.join("home"),
            passphrase,
            access_token: pulumi_secret("access_token"),
            env,
            config: entries,
        };
        Ok((ws, program))
    }
}

/// The project name in a program directory's Pulumi.yaml.
fn read_project(dir: &Path) -> Result<String, ProviderError> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    let text = read("Pulumi.yaml")
        .or_else(|_| read("Pulumi.yml"))
        .map_err(|e| {
            ProviderError::permanent(format!(
                "cannot read the Pulumi program in {}: {e} (it needs a Pulumi.yaml)",
                dir.display()
            ))
        })?;
    stack::project_name(&text).ok_or_else(|| {
        ProviderError::permanent(format!(
            "{} has no `name:`",
            dir.join("Pulumi.yaml").display()
        ))
    })
}

/// 32 random bytes as hex, from the OS.
fn generate_passphrase() -> Result<Sensitive, ProviderError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| ProviderError::transient(format!("no OS randomness for a passphrase: {e}")))?;
    Ok(Sensitive::new(hex::encode(bytes)))
}

fn keys_of(private: Option<&BTreeMap<String, Value>>) -> Vec<String> {
    match private.and_then(|p| p.get(PRIVATE_CONFIG_KEYS)) {
        Some(Value::List(l)) => l
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

/// One resource's conversation with the CLI.
struct Session<'a> {
    ws: &'a Workspace,
    runner: Runner,
}

impl<'a> Session<'a> {
    fn new(ws: &'a Workspace, budget: Budget, address: String) -> Self {
        Session {
            runner: Runner {
                binary: command::binary(),
                cwd: ws.program_dir.clone(),
                env: ws.child_env(),
                redactor: Redactor::new(ws.secrets()),
                budget,
                address,
            },
            ws,
        }
    }

    /// Create the backend and home directories and write the program (if any), so that the
    /// CLI finds them.
    fn ensure_dirs(&self, program: Option<&str>) -> Result<(), ProviderError> {
        let io = |what: &str, p: &Path, e: std::io::Error| {
            ProviderError::permanent(format!("cannot prepare {what} {}: {e}", p.display()))
        };
        if let Some(dir) = &self.ws.backend.dir {
            std::fs::create_dir_all(dir).map_err(|e| io("the pulumi backend", dir, e))?;
        }
        std::fs::create_dir_all(&self.ws.home).map_err(|e| io("PULUMI_HOME", &self.ws.home, e))?;
        if let Some(text) = program {
            let dir = &self.ws.program_dir;
            std::fs::create_dir_all(dir).map_err(|e| io("the program directory", dir, e))?;
            let path = dir.join("Pulumi.yaml");
            if std::fs::read_to_string(&path).ok().as_deref() != Some(text) {
                let tmp = dir.join(".Pulumi.yaml.tmp");
                std::fs::write(&tmp, text).map_err(|e| io("the program", &tmp, e))?;
                std::fs::rename(&tmp, &path).map_err(|e| io("the program", &path, e))?;
            }
        }
        Ok(())
    }

    fn args(&self, words: &[&str], more: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = words.iter().map(|s| (*s).to_owned()).collect();
        a.push("--stack".into());
        a.push(self.ws.stack.clone());
        a.extend(more.iter().map(|s| (*s).to_owned()));
        a.extend(["--non-interactive", "--color", "never"].map(str::to_owned));
        a
    }

    async fn run(&self, inv: Invocation) -> Result<Finished, ProviderError> {
        self.runner
            .run(&inv)
            .await
            .map_err(|e| self.run_error(&inv.label(), e))
    }

    /// Run and require exit 0.
    async fn run_ok(&self, inv: Invocation) -> Result<Finished, ProviderError> {
        let label = inv.label();
        let f = self.run(inv).await?;
        if f.ok() {
            Ok(f)
        } else {
            Err(self.failure(&label, &f))
        }
    }

    fn run_error(&self, label: &str, e: RunError) -> ProviderError {
        match e {
            RunError::Spawn(m) => ProviderError::permanent(m),
            RunError::Stopped { stop, tail } => {
                let last = parse::error_lines(&tail);
                let last = if last.is_empty() {
                    String::new()
                } else {
                    format!(" (its last output: {})", last.join("; "))
                };
                let timeout = humantime::format_duration(self.runner.budget.timeout);
                let grace = humantime::format_duration(self.runner.budget.grace);
                ProviderError::transient(match stop {
                    Stop::Interrupted => format!(
                        "timed out after {timeout}: sent SIGINT to `{label}`, which cancelled gracefully and exited{last}"
                    ),
                    Stop::Killed => format!(
                        "timed out after {timeout}: sent SIGINT to `{label}`, then SIGKILL after {grace} because it had not exited{last}; a killed update leaves its lock behind: if the next run reports the stack locked, clear it with `{}`",
                        self.ws.cancel_command()
                    ),
                })
            }
        }
    }

    /// A non-zero exit as an error (reference §6): lock conflicts name the command that clears
    /// a stale lock and are transient; invocation, authentication and passphrase errors are
    /// permanent, and so are failures of the program or its resources.
    ///
    /// The exit code cannot tell those apart: the CLI exits 1 for a failed resource, a
    /// program error and missing config alike, and before 3.227 it exited 255 for everything
    /// (pkg/cmd/pulumi/cmd/exit_codes.go). So the output decides: under `--json` the
    /// diagnostics are only in stdout (failed-resource events, error diagnostics), and missing
    /// config is named on stderr. Re-running `pulumi up` after a resource error would only
    /// repeat it against the cloud, so those are parked, not retried.
    fn failure(&self, label: &str, f: &Finished) -> ProviderError {
        let text = f.tail_text();
        let code = f
            .code
            .map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}"));
        if parse::is_locked(&text) {
            return ProviderError::transient(format!(
                "{label} ({code}): the stack {} is locked by another update, or by one that was killed; if no pulumi is running for it, clear the lock with `{}`",
                self.ws.stack,
                self.ws.cancel_command()
            ));
        }
        let from_stdout = parse::stdout_failure(&f.stdout);
        let mut lines: Vec<String> = from_stdout
            .errors
            .iter()
            .map(|l| self.runner.redactor.redact(l))
            .collect();
        for l in parse::error_lines(&f.tail) {
            if !lines.contains(&l) {
                lines.push(l);
            }
        }
        lines.truncate(4);
        let detail = if lines.is_empty() {
            "no output".to_owned()
        } else {
            lines.join("; ")
        };
        let msg = format!("{label} failed ({code}): {detail}");
        if parse::is_passphrase_error(&text)
            || parse::is_missing_config(&text)
            || from_stdout.is_program_error()
            || matches!(f.code, Some(2 | 3))
        {
            ProviderError::permanent(msg)
        } else {
            ProviderError::transient(msg)
        }
    }

    /// Select the stack; with `create`, create it when missing. Returns whether it exists.
    async fn select(&self, create: bool) -> Result<bool, ProviderError> {
        let mut args: Vec<String> = vec!["stack".into(), "select".into()];
        if create {
            args.push("--create".into());
        }
        args.push(self.ws.stack.clone());
        args.extend(["--non-interactive", "--color", "never"].map(str::to_owned));
        let inv = Invocation::new(&args);
        let label = inv.label();
        let f = self.run(inv).await?;
        if f.ok() {
            return Ok(true);
        }
        if !create && parse::is_missing_stack(f.code, &f.tail_text()) {
            return Ok(false);
        }
        Err(self.failure(&label, &f))
    }

    /// Remove config keys set before and no longer declared (and structured ones, which are
    /// set leaf by leaf), then set every entry, values on stdin.
    async fn set_config(&self, recorded_keys: &[String]) -> Result<(), ProviderError> {
        let declared = self.ws.config_keys();
        let structured: Vec<&ConfigEntry> = self.ws.config.iter().filter(|c| c.path).collect();
        let mut remove: Vec<(String, bool)> = recorded_keys
            .iter()
            .filter(|k| !declared.contains(k))
            .map(|k| (k.clone(), k.starts_with('[')))
            .collect();
        for c in &structured {
            let top = c.top().to_owned();
            if recorded_keys.contains(&top) && !remove.iter().any(|(k, _)| *k == top) {
                remove.push((top.clone(), top.starts_with('[')));
            }
        }
        for (key, path) in remove {
            let more: Vec<&str> = if path {
                vec!["--path", &key]
            } else {
                vec![&key]
            };
            self.run_ok(Invocation::new(&self.args(&["config", "rm"], &more)))
                .await?;
        }
        for c in &self.ws.config {
            let mut more = vec![if c.is_secret() {
                "--secret"
            } else {
                "--plaintext"
            }];
            if c.path {
                more.push("--path");
            }
            // Values beginning with `-` are safe: the value is not an argument.
            more.push(&c.key);
            let mut inv = Invocation::new(&self.args(&["config", "set"], &more));
            inv.stdin = Some(match &c.value {
                EnvValue::Plain(s) => Sensitive::new(s.clone()),
                EnvValue::Secret(s) => s.clone(),
            });
            self.run_ok(inv).await?;
        }
        Ok(())
    }

    async fn preview(&self) -> Result<Preview, ProviderError> {
        let mut inv = Invocation::new(&self.args(&["preview"], &["--json", "--refresh"]));
        // The document is parsed, not logged line by line.
        inv.log_stdout = false;
        let label = inv.label();
        let f = self.run(inv).await?;
        if !f.ok() {
            return Err(self.failure(&label, &f));
        }
        parse::preview(&f.stdout).map_err(ProviderError::transient)
    }

    async fn up(&self) -> Result<(), ProviderError> {
        let mut inv = Invocation::new(
            &self.args(&["up"], &["--yes", "--skip-preview", "--json", "--refresh"]),
        );
        inv.render = Some(parse::event_line);
        self.run_ok(inv).await.map(drop)
    }

    async fn outputs(&self) -> Result<BTreeMap<String, Value>, ProviderError> {
        let mut shown =
            Invocation::new(&self.args(&["stack", "output"], &["--json", "--show-secrets"]));
        shown.log_stdout = false;
        let shown = self.run_ok(shown).await?;
        let mut masked = Invocation::new(&self.args(&["stack", "output"], &["--json"]));
        masked.log_stdout = false;
        let masked = self.run_ok(masked).await?;
        parse::outputs(&shown.stdout, &masked.stdout).map_err(ProviderError::transient)
    }

    /// Remove a stack whose passphrase tend does not know, if it holds no resources (`stack
    /// rm` without `--force` refuses otherwise).
    async fn remove_unadoptable(&self) -> Result<(), ProviderError> {
        let inv = Invocation::new(&self.args(&["stack", "rm"], &["--yes"]));
        let f = self.run(inv).await?;
        if f.ok() {
            tracing::warn!(stack = %self.ws.stack, "removed an empty stack whose passphrase tend did not keep (a failed create left it); creating it again");
            return Ok(());
        }
        Err(ProviderError::permanent(format!(
            "the stack {} exists and holds resources, but tend has no passphrase for it (an earlier attempt created it and its passphrase was not kept): give its passphrase in a pulumi Credential, or remove the stack by hand (`pulumi stack rm --force` orphans its resources)",
            self.ws.stack
        )))
    }

    /// Destroy the stack's resources, take tend's own config keys out of the stack's config
    /// file, and remove the stack, keeping that file: `Pulumi.<stack>.yaml` beside an
    /// operator's program is theirs, and `stack rm` deletes it unless told
    /// `--preserve-config` (pkg/cmd/pulumi/stack/stack_remove.go).
    async fn destroy(&self) -> Result<(), ProviderError> {
        let mut inv =
            Invocation::new(&self.args(&["destroy"], &["--yes", "--skip-preview", "--json"]));
        inv.render = Some(parse::event_line);
        self.run_ok(inv).await?;
        for key in self.ws.config_keys() {
            let more: Vec<&str> = if key.starts_with('[') {
                vec!["--path", &key]
            } else {
                vec![&key]
            };
            self.run_ok(Invocation::new(&self.args(&["config", "rm"], &more)))
                .await?;
        }
        self.run_ok(Invocation::new(
            &self.args(&["stack", "rm"], &["--yes", "--preserve-config"]),
        ))
        .await
        .map(drop)
    }
}

/// Ownership (issue 11): a stack tend has no record of that already holds resources is not
/// tend's. Only a local file backend can be looked into without running `pulumi` (a plan of a
/// stack that never ran needs neither the CLI nor the cloud): its checkpoint is read. Elsewhere
/// the stack is taken as absent.
fn existing_stack(ws: &Workspace) -> Result<Option<Observed>, ProviderError> {
    let Some(path) = stack::checkpoint_path(&ws.backend, &ws.stack) else {
        return Ok(None);
    };
    let gz = path.with_extension("json.gz");
    let found = match std::fs::read_to_string(&path) {
        Ok(text) => stack::checkpoint_resources(&text).ok_or_else(|| {
            ProviderError::permanent(format!(
                "the checkpoint of stack {} ({}) does not parse",
                ws.stack,
                path.display()
            ))
        })?,
        // A compressed checkpoint (PULUMI_DIY_BACKEND_GZIP) is not read here: the stack exists,
        // and its resources are taken as there.
        Err(_) if gz.exists() => usize::MAX,
        Err(_) => return Ok(None),
    };
    if found == 0 {
        return Ok(None);
    }
    let mut observed = Observed::default();
    observed.details.push(if found == usize::MAX {
        format!("the stack {} exists in {}", ws.stack, ws.backend.url)
    } else {
        format!(
            "the stack {} exists in {} with {found} resources",
            ws.stack, ws.backend.url
        )
    });
    Ok(Some(observed))
}

#[async_trait]
impl Provider for PulumiProvider {
    fn name(&self) -> &'static str {
        "pulumi"
    }

    async fn observe(
        &self,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Option<Observed>, ProviderError> {
        if !desired.connection.is_known() {
            return Ok(None);
        }
        let budget = Budget::starting_now(desired.timeout);
        let private = recorded.map(|r| &r.private);
        let known = desired.spec.is_known();
        let a = &desired.address;
        let (ws, program) = self.prepare(
            a.kind,
            &a.name,
            &desired.spec,
            &desired.connection,
            private,
            known,
        )?;
        if recorded.is_none() {
            return existing_stack(&ws);
        }
        let session = Session::new(&ws, budget, a.to_string());
        session.ensure_dirs(program.as_deref())?;
        if !session.select(false).await? {
            return Ok(None);
        }
        if !known {
            return Ok(Some(Observed {
                details: vec![
                    "pulumi preview runs once the values the config depends on are known".into(),
                ],
                ..Observed::default()
            }));
        }
        if ws.passphrase.is_none() {
            return Err(ProviderError::permanent(format!(
                "the stack {} exists but tend knows no passphrase for it: give one in a pulumi Credential",
                ws.stack
            )));
        }
        session.set_config(&keys_of(private)).await?;
        let preview = session.preview().await?;
        let mut observed = Observed::default();
        observed.fields.insert(
            F_CHANGES.to_owned(),
            Value::Map(
                preview
                    .changes
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::Int(*v)))
                    .collect(),
            ),
        );
        observed.details = preview.details();
        Ok(Some(observed))
    }

    async fn apply(
        &self,
        journal: &dyn Journal,
        desired: &Desired,
        recorded: Option<&Record>,
    ) -> Result<Applied, ProviderError> {
        let budget = Budget::starting_now(desired.timeout);
        let private = recorded.map(|r| &r.private);
        let a = &desired.address;
        let (mut ws, program) = self.prepare(
            a.kind,
            &a.name,
            &desired.spec,
            &desired.connection,
            private,
            true,
        )?;
        if ws.passphrase.is_none() {
            // A stack with no known passphrase is one a failed create left behind (the record
            // it was saved in was replaced). Empty, it is removed and made again; with
            // resources, only its passphrase can adopt it.
            let probe = Session::new(&ws, budget, a.to_string());
            probe.ensure_dirs(program.as_deref())?;
            if probe.select(false).await? {
                probe.remove_unadoptable().await?;
            }
            // Invariant 1: in state before the stack is created with it.
            let p = generate_passphrase()?;
            journal
                .save_private(BTreeMap::from([(
                    PRIVATE_PASSPHRASE.to_owned(),
                    Value::Secret(p.clone()),
                )]))
                .await?;
            ws.passphrase = Some(p);
        }
        let session = Session::new(&ws, budget, a.to_string());
        session.ensure_dirs(program.as_deref())?;
        session.select(true).await?;
        session.set_config(&keys_of(private)).await?;

        let digest = ws.config_digest();
        let keys = Value::List(ws.config_keys().into_iter().map(Value::Str).collect());
        let same_config = private
            .and_then(|p| p.get(PRIVATE_CONFIG_DIGEST))
            .and_then(Value::as_str)
            == Some(digest.as_str());
        let skip = same_config && !session.preview().await?.has_changes();
        if skip {
            tracing::info!(address = %a, stack = %ws.stack, "preview shows no changes and the config is unchanged: not running pulumi up");
        } else {
            tracing::info!(address = %a, stack = %ws.stack, "running pulumi up");
            session.up().await?;
            // So a later step's failure does not cost another `up`.
            journal
                .save_private(BTreeMap::from([
                    (PRIVATE_CONFIG_DIGEST.to_owned(), Value::Str(digest.clone())),
                    (PRIVATE_CONFIG_KEYS.to_owned(), keys.clone()),
                ]))
                .await?;
        }
        let stack_outputs = session.outputs().await?;
        let outputs = match a.kind.as_str() {
            model::CLUSTER => cluster::outputs(&stack_outputs)?,
            _ => stack_outputs,
        };
        let timeout_ms = i64::try_from(desired.timeout.as_millis()).unwrap_or(i64::MAX);
        Ok(Applied {
            outputs,
            private: BTreeMap::from([
                (PRIVATE_CONFIG_DIGEST.to_owned(), Value::Str(digest)),
                (PRIVATE_CONFIG_KEYS.to_owned(), keys),
                (PRIVATE_TIMEOUT_MS.to_owned(), Value::Int(timeout_ms)),
            ]),
        })
    }

    async fn destroy(&self, recorded: &Record) -> Result<(), ProviderError> {
        let timeout = match recorded
            .private
            .get(PRIVATE_TIMEOUT_MS)
            .and_then(Value::as_i64)
        {
            Some(ms) if ms > 0 => Duration::from_millis(ms.unsigned_abs()),
            _ => recorded.kind.model().schema().default_timeout,
        };
        let budget = Budget::starting_now(timeout);
        let a = &recorded.address;
        let (ws, program) = self.prepare(
            recorded.kind,
            &a.name,
            &recorded.spec,
            &recorded.connection,
            Some(&recorded.private),
            recorded.spec.is_known(),
        )?;
        let session = Session::new(&ws, budget, a.to_string());
        session.ensure_dirs(program.as_deref())?;
        if session.select(false).await? {
            if ws.passphrase.is_none() {
                return Err(ProviderError::permanent(format!(
                    "the stack {} exists but tend knows no passphrase for it: give one in a pulumi Credential",
                    ws.stack
                )));
            }
            session
                .set_config(&keys_of(Some(&recorded.private)))
                .await?;
            tracing::info!(address = %a, stack = %ws.stack, "destroying the stack's resources and removing it");
            session.destroy().await?;
        } else {
            tracing::info!(address = %a, stack = %ws.stack, "the stack is already gone");
        }
        if recorded.kind.as_str() == model::CLUSTER {
            // tend's own working copy of the bundled program.
            let _ = std::fs::remove_dir_all(&ws.program_dir);
        }
        Ok(())
    }
}

/// Drift from an observation (pure): anything a refreshed preview would change.
fn differences(observed: &Observed) -> Vec<Drift> {
    let Some(Value::Map(changes)) = observed.fields.get(F_CHANGES) else {
        return Vec::new();
    };
    let preview = Preview {
        changes: changes
            .iter()
            .filter_map(|(k, v)| v.as_i64().map(|n| (k.clone(), n)))
            .collect(),
        ..Preview::default()
    };
    if !preview.has_changes() {
        return Vec::new();
    }
    vec![Drift {
        field: "stack".into(),
        expected: "as the program declares".into(),
        found: format!("pulumi preview: {}", preview.summary()),
    }]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(name: &str) -> Kind {
        Kind::named(name).expect("a registered kind")
    }

    fn provider() -> PulumiProvider {
        PulumiProvider::new(&Context {
            state_dir: PathBuf::from("/var/lib/tend"),
        })
    }

    fn cluster_connection() -> Value {
        let mut cred = Value::map();
        cred.insert("provider", Value::Str("digitalocean".into()));
        cred.insert("token", Value::Secret(Sensitive::new("dop_v1_secret")));
        let mut conn = Value::map();
        conn.insert("credential", cred);
        conn
    }

    fn cluster_spec() -> Value {
        let mut v = Value::map();
        v.insert("cluster_name", Value::Str("app-db".into()));
        v.insert("engine", Value::Str("postgres".into()));
        v.insert("region", Value::Str("nyc3".into()));
        v.insert("size_slug", Value::Str("db-s-1vcpu-1gb".into()));
        v.insert("node_count", Value::Int(1));
        v
    }

    #[test]
    fn a_cluster_runs_the_bundled_program_under_the_state_dir_with_its_token_in_env() {
        let (ws, program) = provider()
            .prepare(
                kind(model::CLUSTER),
                "main",
                &cluster_spec(),
                &cluster_connection(),
                None,
                true,
            )
            .expect("prepares");
        assert_eq!(
            ws.program_dir,
            PathBuf::from("/var/lib/tend/pulumi/programs/digitalocean-database-cluster/main")
        );
        assert_eq!(ws.stack, "organization/digitalocean-database-cluster/main");
        assert_eq!(ws.backend.url, "file:///var/lib/tend/pulumi/backend");
        assert_eq!(ws.home, PathBuf::from("/var/lib/tend/pulumi/home"));
        assert!(ws.passphrase.is_none(), "generated at apply, not here");
        assert!(program.is_some_and(|p| p.contains("digitalocean:DatabaseCluster")));
        assert!(
            ws.env
                .iter()
                .any(|(k, v)| k == "DIGITALOCEAN_TOKEN" && v.expose() == "dop_v1_secret")
        );
        // The token is never a config value (config values could end up on a command line).
        assert!(
            ws.config
                .iter()
                .all(|c| c.value.expose() != "dop_v1_secret")
        );
    }

    #[test]
    fn a_recorded_passphrase_wins_over_the_credentials() {
        let mut conn = cluster_connection();
        let mut pulumi = Value::map();
        pulumi.insert(
            "passphrase",
            Value::Secret(Sensitive::new("from-credential")),
        );
        conn.insert("pulumi", pulumi.clone());
        let p = provider();
        let prep = |private: Option<&BTreeMap<String, Value>>| {
            p.prepare(
                kind(model::CLUSTER),
                "main",
                &cluster_spec(),
                &conn,
                private,
                true,
            )
            .expect("prepares")
            .0
            .passphrase
            .map(|s| s.expose().to_owned())
        };
        assert_eq!(prep(None).as_deref(), Some("from-credential"));
        let private = BTreeMap::from([(
            PRIVATE_PASSPHRASE.to_owned(),
            Value::Secret(Sensitive::new("generated")),
        )]);
        assert_eq!(prep(Some(&private)).as_deref(), Some("generated"));
    }

    #[test]
    fn a_stack_without_a_program_is_a_permanent_error() {
        let mut conn = Value::map();
        conn.insert("program_dir", Value::Str("/nonexistent/program".into()));
        let mut spec = Value::map();
        spec.insert("program", Value::Str("program".into()));
        spec.insert("stack", Value::Str("dev".into()));
        let e = provider()
            .prepare(kind(model::STACK), "app", &spec, &conn, None, true)
            .expect_err("no Pulumi.yaml");
        assert!(e.message.contains("Pulumi.yaml"), "{}", e.message);
    }

    #[test]
    fn preview_changes_are_drift_and_sames_are_not() {
        let mut o = Observed::default();
        let mut changes = Value::map();
        changes.insert("update", Value::Int(1));
        o.fields.insert(F_CHANGES.to_owned(), changes);
        let d = differences(&o);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].found, "pulumi preview: 1 to update");
        o.fields.insert(F_CHANGES.to_owned(), Value::map());
        assert!(differences(&o).is_empty());
        assert!(differences(&Observed::default()).is_empty());
    }

    #[test]
    fn the_models_name_immutable_fields_and_one_concurrency_key() {
        use crate::model::KindModel;
        assert_eq!(
            model::DigitalOceanDatabaseCluster.immutable_fields(),
            ["cluster_name", "engine", "vpc"]
        );
        assert_eq!(model::PulumiStack.immutable_fields(), ["stack"]);
        let d = Desired {
            address: "PulumiStack.x".parse().expect("address"),
            spec: Value::map(),
            connection: Value::map(),
            timeout: Duration::from_secs(1),
            prevent_destroy: false,
            adopt: false,
            depends_on: Vec::new(),
        };
        assert_eq!(
            model::PulumiStack.concurrency(&d.connection),
            ("pulumi".to_owned(), CONCURRENCY)
        );
        assert!(model::PulumiStack.known_outputs(&d).is_empty());
    }
}
