//! A `pulumi` CLI double for tend's tests (the real CLI cannot be installed on our machines).
//!
//! It follows shared/reference/pulumi-cli.md: the commands and flags of §3 (`login`, `stack
//! select [--create]`, `stack init`, `stack rm`, `stack output [--json] [--show-secrets]`,
//! `config set [--secret|--plaintext] [--path]` with the value as an argument or on stdin,
//! `config get`, `config rm`, `preview --json`, `up --yes --skip-preview [--json]`, `refresh`,
//! `destroy [--remove]`, `cancel`, global `--cwd/-C`, `--non-interactive`, `--color`), the
//! environment of §2 (`PULUMI_BACKEND_URL`, `PULUMI_CONFIG_PASSPHRASE[_FILE]`, `PULUMI_HOME`),
//! the DIY file backend layout and locks of §5 (`.pulumi/meta.yaml`, `.pulumi/stacks/<project>/
//! <stack>.json`, `.pulumi/locks/organization/<project>/<stack>/<uuid>.json` and the lock
//! conflict message), the JSON shapes of §4 (the 4-space preview document, NDJSON engine events,
//! 2-space stack outputs with `[secret]` masking), SIGINT/SIGTERM as a graceful cancel, and the
//! exit codes of §6 (CLI ≥ 3.227; `PULUMI_DOUBLE_LEGACY_EXIT=1` turns every failure into 255 as
//! before 3.227).
//!
//! The program in the working directory's Pulumi.yaml (Pulumi YAML, §8) decides which resources
//! and outputs exist: config with types and defaults, `${config}` and `${resource.property}`
//! interpolation, `fn::secret`. "The cloud" is the stack's checkpoint: a DigitalOcean
//! DatabaseCluster gets real-shaped outputs (host from its name, a generated password, a secret
//! URI) and needs DIGITALOCEAN_TOKEN; any other type echoes its inputs.
//!
//! Test hooks, all environment variables:
//! - `PULUMI_DOUBLE_LOG=<file>`: one JSON line per invocation (pid, argv, cwd, the
//!   DIGITALOCEAN_TOKEN it saw, the PULUMI_* it saw), and one per hang, signal and exit.
//! - `PULUMI_DOUBLE_FAIL=<cmd>[,<cmd>…]`: that command fails as a resource error would (exit 1).
//! - `PULUMI_DOUBLE_HANG=<cmd>[,…]`: that command sleeps (holding its lock) until signalled.
//!   On SIGINT it cancels gracefully, taking `PULUMI_DOUBLE_CANCEL_SECS` (default 0) to do so.
//! - `PULUMI_DOUBLE_LOCKED=1`: every locking command finds the stack locked by another process.
//! - `PULUMI_DOUBLE_CLOUD_EDIT=<resource>.<property>=<value>[,…]`: a change made outside
//!   Pulumi, seen only by `refresh` and `preview`/`up --refresh`.
//!
//! As strict as upstream (issue 12): under `--json` diagnostics go only into stdout; a resource
//! error exits 1 with a `resOpFailedEvent`; the legacy DIY layout (meta.yaml version 0, or
//! existing project-less stacks, or `PULUMI_DIY_BACKEND_LEGACY_LAYOUT`) refuses `/` in stack
//! names; `stack rm` without `--preserve-config` deletes `Pulumi.<stack>.yaml`; engines the
//! DigitalOcean provider does not list fail the resource's check; config strings that parse as
//! numbers or booleans reach the program as such (pulumi-yaml). See program.rs and store.rs for
//! the upstream source each follows.
//!
//! `<cmd>` is the command's words joined by `-`: `up`, `preview`, `destroy`, `refresh`,
//! `stack-output`, `stack-select`, `config-set`, …

mod program;
mod store;

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value as J, json};

use program::Program;
use store::{Backend, Crypter, StackRef};

pub const VERSION: &str = "v3.260.0";

/// Signals received (SIGINT and SIGTERM alike).
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
static LAST_SIGNAL: AtomicUsize = AtomicUsize::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    SIGNALS.fetch_add(1, Ordering::SeqCst);
    LAST_SIGNAL.store(usize::try_from(sig).unwrap_or(0), Ordering::SeqCst);
}

/// A failure: message for stderr and the exit code.
#[derive(Debug)]
pub struct Fail {
    pub code: i32,
    pub message: String,
}

impl Fail {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Fail {
            code,
            message: message.into(),
        }
    }
    /// An error already reported (diagnostics printed): exit 1, no extra line.
    pub fn bail() -> Self {
        Fail::new(1, "")
    }
}

pub type Res<T> = Result<T, Fail>;

/// Parsed flags of one command.
#[derive(Debug, Default)]
pub struct Flags {
    pub positional: Vec<String>,
    values: BTreeMap<String, String>,
}

impl Flags {
    pub fn has(&self, name: &str) -> bool {
        self.values
            .get(name)
            .is_some_and(|v| v != "false" && v != "0")
    }
    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Flags every command takes: (name, takes a value).
const GLOBAL: &[(&str, bool)] = &[
    ("--cwd", true),
    ("--non-interactive", false),
    ("--color", true),
    ("--logtostderr", false),
    ("--logflow", false),
    ("--verbose", true),
    ("--tracing", true),
    ("--disable-integrity-checking", false),
    ("--emoji", false),
];

/// Each command's own flags.
fn command_flags(cmd: &str) -> Option<&'static [(&'static str, bool)]> {
    const STACK: (&str, bool) = ("--stack", true);
    Some(match cmd {
        "version" | "whoami" => &[],
        "login" => &[
            ("--local", false),
            ("--cloud-url", true),
            ("--insecure", false),
        ],
        "stack-select" => &[STACK, ("--create", false), ("--secrets-provider", true)],
        "stack-init" => &[STACK, ("--secrets-provider", true), ("--no-select", false)],
        "stack-rm" => &[
            STACK,
            ("--yes", false),
            ("--force", false),
            ("--preserve-config", false),
        ],
        "stack-output" => &[
            STACK,
            ("--json", false),
            ("--show-secrets", false),
            ("--shell", false),
        ],
        "config-set" => &[
            STACK,
            ("--secret", false),
            ("--plaintext", false),
            ("--path", false),
            ("--type", true),
            ("--config-file", true),
        ],
        "config-get" => &[
            STACK,
            ("--json", false),
            ("--path", false),
            ("--config-file", true),
        ],
        "config-rm" => &[STACK, ("--path", false), ("--config-file", true)],
        "config" => &[
            STACK,
            ("--json", false),
            ("--show-secrets", false),
            ("--config-file", true),
        ],
        "preview" => &[
            STACK,
            ("--json", false),
            ("--refresh", false),
            ("--diff", false),
            ("--show-sames", false),
            ("--show-replacement-steps", false),
            ("--expect-no-changes", false),
            ("--config-file", true),
            ("--parallel", true),
            ("--message", true),
            ("--target", true),
            ("--suppress-outputs", false),
        ],
        "up" => &[
            STACK,
            ("--yes", false),
            ("--skip-preview", false),
            ("--json", false),
            ("--refresh", false),
            ("--diff", false),
            ("--show-sames", false),
            ("--expect-no-changes", false),
            ("--config-file", true),
            ("--parallel", true),
            ("--message", true),
            ("--target", true),
            ("--suppress-outputs", false),
        ],
        "refresh" => &[
            STACK,
            ("--yes", false),
            ("--skip-preview", false),
            ("--json", false),
            ("--clear-pending-creates", false),
            ("--skip-pending-creates", false),
            ("--expect-no-changes", false),
            ("--message", true),
        ],
        "destroy" => &[
            STACK,
            ("--yes", false),
            ("--skip-preview", false),
            ("--json", false),
            ("--remove", false),
            ("--refresh", false),
            ("--exclude-protected", false),
            ("--message", true),
            ("--target", true),
        ],
        "cancel" => &[STACK, ("--yes", false)],
        _ => return None,
    })
}

/// Short flags per command.
fn alias(cmd: &str, short: &str) -> Option<&'static str> {
    Some(match (cmd, short) {
        (_, "-C") => "--cwd",
        (_, "-v") => "--verbose",
        (_, "-e") => "--emoji",
        ("login", "-l") => "--local",
        ("login", "-c") => "--cloud-url",
        ("stack-select", "-c") => "--create",
        ("stack-rm", "-y") => "--yes",
        ("stack-rm", "-f") => "--force",
        ("stack-output" | "config-get" | "config", "-j") => "--json",
        ("preview" | "up" | "refresh" | "destroy", "-j") => "--json",
        ("up" | "refresh" | "destroy" | "cancel", "-y") => "--yes",
        ("up" | "refresh" | "destroy", "-f") => "--skip-preview",
        ("preview" | "up", "-r") => "--refresh",
        ("preview" | "up", "-p") => "--parallel",
        ("preview" | "up" | "refresh" | "destroy", "-m") => "--message",
        (_, "-s") => "--stack",
        _ => return None,
    })
}

/// The command words (`stack output` → `stack-output`) and the rest of argv.
fn command_of(args: &[String]) -> (String, Vec<String>) {
    // Value flags anywhere, so their values are not taken for command words.
    const VALUE_FLAGS: [&str; 12] = [
        "--cwd",
        "-C",
        "--color",
        "--stack",
        "-s",
        "--verbose",
        "-v",
        "--secrets-provider",
        "--type",
        "--config-file",
        "--message",
        "-m",
    ];
    let mut words: Vec<String> = Vec::new();
    let mut rest: Vec<String> = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            rest.extend(args[i..].iter().cloned());
            break;
        }
        if a.starts_with('-') && a.len() > 1 {
            rest.push(a.clone());
            if VALUE_FLAGS.contains(&a.as_str()) && i + 1 < args.len() {
                rest.push(args[i + 1].clone());
                i += 1;
            }
        } else if words.is_empty()
            || (words.len() == 1
                && matches!(words[0].as_str(), "stack" | "config")
                && is_subcommand(&words[0], a))
        {
            words.push(a.clone());
        } else {
            rest.push(a.clone());
        }
        i += 1;
    }
    (words.join("-"), rest)
}

fn is_subcommand(group: &str, word: &str) -> bool {
    match group {
        "stack" => matches!(word, "select" | "init" | "new" | "rm" | "output" | "ls"),
        "config" => matches!(word, "set" | "get" | "rm"),
        _ => false,
    }
}

fn parse_flags(cmd: &str, rest: &[String]) -> Res<Flags> {
    let own = command_flags(cmd).ok_or_else(|| {
        Fail::new(
            2,
            format!(
                "unknown command \"{}\" for \"pulumi\"",
                cmd.replace('-', " ")
            ),
        )
    })?;
    let mut flags = Flags::default();
    let mut i = 0;
    let mut only_positional = false;
    while i < rest.len() {
        let a = &rest[i];
        i += 1;
        if only_positional || !a.starts_with('-') || a == "-" {
            flags.positional.push(a.clone());
            continue;
        }
        if a == "--" {
            only_positional = true;
            continue;
        }
        let (name, inline) = match a.split_once('=') {
            Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
            None => (a.clone(), None),
        };
        let name = if name.starts_with("--") {
            name
        } else {
            alias(cmd, &name).map(str::to_owned).ok_or_else(|| {
                Fail::new(
                    2,
                    format!("unknown shorthand flag: '{}' in {a}", &name[1..]),
                )
            })?
        };
        let takes_value = GLOBAL
            .iter()
            .chain(own.iter())
            .find(|(n, _)| *n == name)
            .map(|(_, v)| *v)
            .ok_or_else(|| Fail::new(2, format!("unknown flag: {name}")))?;
        let value = match (takes_value, inline) {
            (_, Some(v)) => v,
            (true, None) => {
                let v = rest
                    .get(i)
                    .cloned()
                    .ok_or_else(|| Fail::new(2, format!("flag needs an argument: {name}")))?;
                i += 1;
                v
            }
            (false, None) => "true".to_owned(),
        };
        flags.values.insert(name, value);
    }
    Ok(flags)
}

/// Append one JSON line to `PULUMI_DOUBLE_LOG`.
pub fn log(entry: J) {
    let Some(path) = std::env::var_os("PULUMI_DOUBLE_LOG") else {
        return;
    };
    let mut entry = entry;
    if let Some(o) = entry.as_object_mut() {
        o.insert("pid".into(), json!(std::process::id()));
    }
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = f.write_all(format!("{entry}\n").as_bytes());
    }
}

fn hooks(var: &str, cmd: &str) -> bool {
    std::env::var(var)
        .map(|v| v.split(',').any(|c| c.trim() == cmd))
        .unwrap_or(false)
}

/// Everything a command works with.
pub struct Ctx {
    pub cmd: String,
    pub flags: Flags,
    pub cwd: PathBuf,
    pub home: PathBuf,
    pub json: bool,
    pub interactive: bool,
}

impl Ctx {
    pub fn passphrase(&self) -> Option<String> {
        if let Ok(p) = std::env::var("PULUMI_CONFIG_PASSPHRASE") {
            return Some(p);
        }
        let file = std::env::var_os("PULUMI_CONFIG_PASSPHRASE_FILE")?;
        std::fs::read_to_string(file)
            .ok()
            .map(|s| s.trim_end_matches('\n').to_owned())
    }

    pub fn need_passphrase(&self) -> Res<String> {
        self.passphrase().ok_or_else(|| {
            Fail::new(
                1,
                "passphrase must be set with PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE environment variables",
            )
        })
    }

    /// Whether the test asked this command to fail / hang.
    pub fn told_to(&self, what: &str) -> bool {
        hooks(what, &self.cmd)
    }

    pub fn project(&self) -> Res<Program> {
        Program::find(&self.cwd)
    }

    pub fn backend(&self) -> Res<Backend> {
        let url = match std::env::var("PULUMI_BACKEND_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => store::logged_in(&self.home).ok_or_else(|| {
                Fail::new(
                    3,
                    "PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions",
                )
            })?,
        };
        Backend::open(&url, &self.cwd)
    }

    /// The stack named by `--stack`, a positional name, or the selected one.
    pub fn stack_ref(
        &self,
        program: &Program,
        backend: &Backend,
        positional: bool,
    ) -> Res<StackRef> {
        let named = self.flags.value("--stack").map(str::to_owned).or_else(|| {
            positional
                .then(|| self.flags.positional.first().cloned())
                .flatten()
        });
        match named {
            Some(n) => {
                backend.check_name(&n)?;
                StackRef::parse(&n, &program.name)
            }
            None => backend.selected(&self.home, &program.name).ok_or_else(|| {
                Fail::new(
                    6,
                    "no stack selected; please use `pulumi stack select` to choose one",
                )
            }),
        }
    }

    /// Hang until signalled, then cancel gracefully; returns only if not told to hang.
    pub fn maybe_hang(&self, on_cancel: &mut dyn FnMut()) -> Res<()> {
        if !self.told_to("PULUMI_DOUBLE_HANG") {
            return Ok(());
        }
        log(json!({"event": "hang", "command": self.cmd}));
        while SIGNALS.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(10));
        }
        let term =
            LAST_SIGNAL.load(Ordering::SeqCst) == usize::try_from(libc::SIGTERM).unwrap_or(15);
        log(json!({"event": "signal", "signal": if term { "SIGTERM" } else { "SIGINT" }}));
        let msg = if term {
            "SIGTERM received; cancelling. If you would like to terminate immediately, send SIGTERM again."
        } else {
            "^C received; cancelling. If you would like to terminate immediately, press ^C again."
        };
        let note = (self.cmd != "preview")
            .then_some("Note that terminating immediately may lead to orphaned resources and other inconsistencies.");
        if self.json {
            let mut m = msg.to_owned();
            if let Some(n) = note {
                m.push('\n');
                m.push_str(n);
            }
            event(json!({"stdoutEvent": {"message": m, "color": "never"}}));
        } else {
            println!("{msg}");
            if let Some(n) = note {
                println!("{n}");
            }
        }
        let secs: f64 = std::env::var("PULUMI_DOUBLE_CANCEL_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        let until = Instant::now() + Duration::from_secs_f64(secs.max(0.0));
        while Instant::now() < until {
            if SIGNALS.load(Ordering::SeqCst) > 1 {
                println!("^C received; terminating");
                log(json!({"event": "terminated"}));
                std::process::exit(exit_code(255));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        on_cancel();
        if self.json {
            event(json!({"cancelEvent": {}}));
        }
        Err(Fail::new(1, "update canceled"))
    }
}

static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// Print one engine event (NDJSON, §4.2).
pub fn event(mut body: J) {
    let seq = SEQUENCE.fetch_add(1, Ordering::SeqCst);
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if let Some(o) = body.as_object_mut() {
        o.insert("sequence".into(), json!(seq));
        o.insert("timestamp".into(), json!(ts));
    }
    println!("{body}");
}

/// Pretty JSON with a given indent, HTML not escaped (serde_json never escapes it).
pub fn pretty(v: &J, indent: &[u8]) -> String {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(indent);
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    let _ = serde::Serialize::serialize(v, &mut ser);
    String::from_utf8(buf).unwrap_or_default()
}

fn exit_code(code: i32) -> i32 {
    let legacy = std::env::var("PULUMI_DOUBLE_LEGACY_EXIT").is_ok_and(|v| v == "1");
    if legacy && code != 0 { 255 } else { code }
}

fn main() {
    // SAFETY: installing async-signal-safe handlers (atomics only) once at start.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    log(json!({
        "event": "start",
        "argv": args,
        "cwd": cwd.display().to_string(),
        "digitalocean_token": std::env::var("DIGITALOCEAN_TOKEN").ok(),
        "env": {
            "PULUMI_BACKEND_URL": std::env::var("PULUMI_BACKEND_URL").ok(),
            "PULUMI_HOME": std::env::var("PULUMI_HOME").ok(),
            "PULUMI_SKIP_UPDATE_CHECK": std::env::var("PULUMI_SKIP_UPDATE_CHECK").ok(),
            "PULUMI_CONFIG_PASSPHRASE_SET": std::env::var("PULUMI_CONFIG_PASSPHRASE").is_ok(),
        },
    }));
    let code = match run(args, cwd) {
        Ok(()) => 0,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("error: {}", f.message);
            }
            exit_code(f.code)
        }
    };
    let _ = std::io::stdout().flush();
    log(json!({"event": "exit", "code": code}));
    std::process::exit(code);
}

fn run(args: Vec<String>, cwd: PathBuf) -> Res<()> {
    let (cmd, rest) = command_of(&args);
    let cmd = if cmd == "stack-new" {
        "stack-init".to_owned()
    } else {
        cmd
    };
    if cmd.is_empty() {
        println!("Usage:\n  pulumi [command]");
        return Ok(());
    }
    let flags = parse_flags(&cmd, &rest)?;
    let cwd = match flags.value("--cwd") {
        Some(d) => {
            let p = cwd.join(d);
            if !p.is_dir() {
                return Err(Fail::new(
                    1,
                    format!("changing the working directory: chdir {d}: no such file or directory"),
                ));
            }
            p
        }
        None => cwd,
    };
    let interactive = !flags.has("--non-interactive")
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let home = std::env::var_os("PULUMI_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pulumi")))
        .unwrap_or_else(|| PathBuf::from(".pulumi"));
    let ctx = Ctx {
        json: flags.has("--json"),
        cmd: cmd.clone(),
        flags,
        cwd,
        home,
        interactive,
    };
    if ctx.told_to("PULUMI_DOUBLE_FAIL")
        && !matches!(cmd.as_str(), "up" | "destroy" | "refresh" | "preview")
    {
        return Err(Fail::new(
            1,
            format!("{} failed (PULUMI_DOUBLE_FAIL)", cmd.replace('-', " ")),
        ));
    }
    match cmd.as_str() {
        "version" => {
            println!("{VERSION}");
            Ok(())
        }
        "whoami" => {
            println!(
                "{}",
                std::env::var("USER").unwrap_or_else(|_| "user".into())
            );
            Ok(())
        }
        "login" => login(&ctx),
        "stack-select" => stack_select(&ctx),
        "stack-init" => stack_init(&ctx),
        "stack-rm" => stack_rm(&ctx),
        "stack-output" => stack_output(&ctx),
        "config-set" => config_set(&ctx),
        "config-get" => config_get(&ctx),
        "config-rm" => config_rm(&ctx),
        "config" => config_list(&ctx),
        "preview" => program::preview(&ctx),
        "up" => program::up(&ctx),
        "refresh" => program::refresh(&ctx),
        "destroy" => program::destroy(&ctx),
        "cancel" => cancel(&ctx),
        _ => Err(Fail::new(2, format!("unknown command {cmd:?}"))),
    }
}

fn login(ctx: &Ctx) -> Res<()> {
    let url = if ctx.flags.has("--local") {
        "file://~".to_owned()
    } else {
        ctx.flags
            .positional
            .first()
            .cloned()
            .or_else(|| ctx.flags.value("--cloud-url").map(str::to_owned))
            .or_else(|| std::env::var("PULUMI_BACKEND_URL").ok())
            .ok_or_else(|| {
                Fail::new(
                    3,
                    "PULUMI_ACCESS_TOKEN must be set for login during non-interactive CLI sessions",
                )
            })?
    };
    let backend = Backend::open(&url, &ctx.cwd)?;
    store::save_login(&ctx.home, &backend.url)?;
    let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    println!("Logged in to {host} as {user} ({})", backend.url);
    Ok(())
}

fn stack_select(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let named = ctx
        .flags
        .value("--stack")
        .map(str::to_owned)
        .or_else(|| ctx.flags.positional.first().cloned())
        .ok_or_else(|| {
            Fail::new(
                6,
                "no stack selected; please use `pulumi stack select` to choose one",
            )
        })?;
    backend.check_name(&named)?;
    let r = StackRef::parse(&named, &program.name)?;
    if !backend.exists(&r) {
        if !ctx.flags.has("--create") {
            return Err(Fail::new(6, format!("no stack named '{}' found", named)));
        }
        create_stack(ctx, &backend, &program, &r)?;
        println!("Created stack '{}'", r.name);
    }
    backend.select(&ctx.home, &r)
}

fn create_stack(ctx: &Ctx, backend: &Backend, program: &Program, r: &StackRef) -> Res<()> {
    if let Some(p) = ctx.flags.value("--secrets-provider")
        && p != "passphrase"
        && p != "default"
    {
        return Err(Fail::new(
            2,
            format!("the double supports only the passphrase secrets provider, not {p:?}"),
        ));
    }
    backend.check_unlocked(r)?;
    let passphrase = ctx.need_passphrase()?;
    let crypter = Crypter::new_salt(&passphrase);
    backend.create(r, &crypter)?;
    let mut cfg = store::StackConfig::load(&program.dir, &r.name)?;
    cfg.salt = Some(crypter.salt_line());
    cfg.save(&program.dir, &r.name)
}

fn stack_init(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let named = ctx
        .flags
        .value("--stack")
        .map(str::to_owned)
        .or_else(|| ctx.flags.positional.first().cloned())
        .ok_or_else(|| Fail::new(2, "a stack name is required in non-interactive mode"))?;
    backend.check_name(&named)?;
    let r = StackRef::parse(&named, &program.name)?;
    if backend.exists(&r) {
        return Err(Fail::new(1, format!("stack '{}' already exists", r.name)));
    }
    create_stack(ctx, &backend, &program, &r)?;
    println!("Created stack '{}'", r.name);
    if !ctx.flags.has("--no-select") {
        backend.select(&ctx.home, &r)?;
    }
    Ok(())
}

fn stack_rm(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, true)?;
    if !backend.exists(&r) {
        return Err(Fail::new(6, format!("no stack named '{}' found", r.name)));
    }
    if !ctx.flags.has("--yes") && !ctx.interactive {
        return Err(Fail::new(
            2,
            "--yes must be passed in to proceed when running in non-interactive mode",
        ));
    }
    backend.check_unlocked(&r)?;
    let cp = backend.load(&r, None)?;
    let live = cp
        .resources
        .iter()
        .filter(|x| x.ty != program::STACK_TYPE)
        .count();
    if live > 0 && !ctx.flags.has("--force") {
        return Err(Fail::new(
            1,
            format!(
                "'{}' still has resources; removal rejected. Possible actions:\n- Make sure that '{}' is the correct stack to remove\n- Run `pulumi destroy` to delete the resources, then run `pulumi stack rm`\n- Run `pulumi stack rm --force` to override this error",
                r.name, r.name
            ),
        ));
    }
    backend.remove(&r)?;
    if !ctx.flags.has("--preserve-config") {
        let _ = std::fs::remove_file(store::StackConfig::path(&program.dir, &r.name));
    }
    println!("Stack '{}' has been removed!", r.name);
    Ok(())
}

fn stack_output(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, false)?;
    if !backend.exists(&r) {
        return Err(Fail::new(6, format!("no stack named '{}' found", r.name)));
    }
    let show = ctx.flags.has("--show-secrets");
    let crypter = if show {
        Some(backend.crypter(&r, &program, &ctx.need_passphrase()?)?)
    } else {
        None
    };
    let cp = backend.load(&r, crypter.as_ref())?;
    let outputs = cp
        .resources
        .iter()
        .find(|x| x.ty == program::STACK_TYPE)
        .map(|x| x.outputs.clone())
        .unwrap_or_else(|| json!({}));
    let render = |v: &J| {
        if show {
            store::reveal(v)
        } else {
            store::mask(v)
        }
    };
    if let Some(name) = ctx.flags.positional.first() {
        let v = outputs.get(name).ok_or_else(|| {
            Fail::new(
                1,
                format!("current stack does not have output property '{name}'"),
            )
        })?;
        let v = render(v);
        if ctx.json {
            println!("{}", pretty(&v, b"  "));
        } else {
            println!(
                "{}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            );
        }
        return Ok(());
    }
    let all: serde_json::Map<String, J> = outputs
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), render(v))).collect())
        .unwrap_or_default();
    if ctx.json {
        println!("{}", pretty(&J::Object(all), b"  "));
    } else if ctx.flags.has("--shell") {
        for (k, v) in &all {
            println!(
                "{k}={}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            );
        }
    } else {
        println!("Current stack outputs ({}):", all.len());
        println!("    OUTPUT  VALUE");
        for (k, v) in &all {
            println!(
                "    {k}  {}",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            );
        }
    }
    Ok(())
}

/// The config key with the project namespace (`clusterName` → `proj:clusterName`).
pub fn full_key(key: &str, project: &str) -> String {
    if key.contains(':') {
        key.to_owned()
    } else {
        format!("{project}:{key}")
    }
}

/// Split a `--path` key into its top-level key and the path below it.
fn split_path(key: &str) -> Res<(String, Vec<store::Seg>)> {
    let segs =
        store::parse_path(key).map_err(|e| Fail::new(2, format!("invalid --path {key:?}: {e}")))?;
    let mut it = segs.into_iter();
    match it.next() {
        Some(store::Seg::Key(k)) => Ok((k, it.collect())),
        _ => Err(Fail::new(
            2,
            format!("invalid --path {key:?}: it must start with a key"),
        )),
    }
}

fn looks_like_secret(key: &str, value: &str) -> bool {
    let k = key.to_lowercase();
    let named = ["passwd", "pass", "password", "pwd", "secret", "token"]
        .iter()
        .any(|w| k.contains(w));
    if !named || value.len() < 8 {
        return false;
    }
    // Shannon entropy per character: random strings are above 3 bits.
    let mut counts = BTreeMap::new();
    for c in value.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = value.chars().count() as f64;
    let h: f64 = counts
        .values()
        .map(|c| {
            let p = *c as f64 / n;
            -p * p.log2()
        })
        .sum();
    h > 3.0
}

fn config_set(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, false)?;
    if !backend.exists(&r) {
        return Err(Fail::new(6, format!("no stack named '{}' found", r.name)));
    }
    let key = ctx
        .flags
        .positional
        .first()
        .cloned()
        .ok_or_else(|| Fail::new(2, "accepts between 1 and 2 arg(s), received 0"))?;
    let value = match ctx.flags.positional.get(1) {
        Some(v) => v.clone(),
        None if !std::io::stdin().is_terminal() => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .map_err(|e| Fail::new(1, format!("reading the value from stdin: {e}")))?;
            log(json!({"event": "stdin", "key": key}));
            s.strip_suffix('\n').map(str::to_owned).unwrap_or(s)
        }
        None => {
            return Err(Fail::new(
                2,
                "value must be specified in non-interactive mode",
            ));
        }
    };
    let secret = ctx.flags.has("--secret");
    if secret && ctx.flags.has("--plaintext") {
        return Err(Fail::new(
            2,
            "only one of --secret and --plaintext may be specified",
        ));
    }
    if !secret && !ctx.flags.has("--plaintext") && looks_like_secret(&key, &value) {
        return Err(Fail::new(
            1,
            format!(
                "config value for '{key}' looks like a secret; rerun with --secret to encrypt it, or --plaintext if you meant to store in plaintext"
            ),
        ));
    }
    let mut cfg = store::StackConfig::load(&program.dir, &r.name)?;
    let leaf = if secret {
        let crypter = backend.crypter(&r, &program, &ctx.need_passphrase()?)?;
        if cfg.salt.is_none() {
            cfg.salt = Some(crypter.salt_line());
        }
        json!({"secure": crypter.encrypt(&value)})
    } else if ctx.flags.has("--path") {
        store::typed_leaf(&value)
    } else {
        J::String(value)
    };
    if ctx.flags.has("--path") {
        let (top, below) = split_path(&key)?;
        let top = full_key(&top, &program.name);
        let slot = cfg.values.entry(top).or_insert(J::Null);
        store::set_path(slot, &below, leaf).map_err(|e| Fail::new(2, e))?;
    } else {
        cfg.values.insert(full_key(&key, &program.name), leaf);
    }
    cfg.save(&program.dir, &r.name)
}

fn config_get(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, false)?;
    let key = ctx
        .flags
        .positional
        .first()
        .cloned()
        .ok_or_else(|| Fail::new(2, "accepts 1 arg(s), received 0"))?;
    let cfg = store::StackConfig::load(&program.dir, &r.name)?;
    let full = full_key(&key, &program.name);
    let v = cfg.values.get(&full).ok_or_else(|| {
        Fail::new(
            1,
            format!(
                "configuration key '{full}' not found for stack '{}'",
                r.name
            ),
        )
    })?;
    let secret = store::has_secure(v);
    let plain = if secret {
        let crypter = backend.crypter(&r, &program, &ctx.need_passphrase()?)?;
        store::decrypt_config(v, &crypter)?
    } else {
        v.clone()
    };
    if ctx.json {
        println!(
            "{}",
            pretty(
                &json!({"value": plain.as_str().map_or_else(|| plain.to_string(), str::to_owned), "secret": secret}),
                b"  "
            )
        );
    } else {
        println!(
            "{}",
            plain
                .as_str()
                .map_or_else(|| plain.to_string(), str::to_owned)
        );
    }
    Ok(())
}

fn config_rm(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, false)?;
    let key = ctx
        .flags
        .positional
        .first()
        .cloned()
        .ok_or_else(|| Fail::new(2, "accepts 1 arg(s), received 0"))?;
    let mut cfg = store::StackConfig::load(&program.dir, &r.name)?;
    let top = if ctx.flags.has("--path") {
        split_path(&key)?.0
    } else {
        key
    };
    cfg.values.remove(&full_key(&top, &program.name));
    cfg.save(&program.dir, &r.name)
}

fn config_list(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, false)?;
    let cfg = store::StackConfig::load(&program.dir, &r.name)?;
    let show = ctx.flags.has("--show-secrets");
    let crypter = if show {
        Some(backend.crypter(&r, &program, &ctx.need_passphrase()?)?)
    } else {
        None
    };
    let mut out = serde_json::Map::new();
    for (k, v) in &cfg.values {
        let secret = store::has_secure(v);
        let value = match (&crypter, secret) {
            (Some(c), true) => store::decrypt_config(v, c)?,
            (None, true) => J::String("[secret]".into()),
            _ => v.clone(),
        };
        out.insert(k.clone(), json!({"value": value, "secret": secret}));
    }
    if ctx.json {
        println!("{}", pretty(&J::Object(out), b"  "));
    } else {
        println!("KEY  VALUE");
        for (k, v) in &out {
            println!("{k}  {}", v["value"]);
        }
    }
    Ok(())
}

fn cancel(ctx: &Ctx) -> Res<()> {
    let program = ctx.project()?;
    let backend = ctx.backend()?;
    let r = ctx.stack_ref(&program, &backend, true)?;
    if !backend.exists(&r) {
        return Err(Fail::new(6, format!("no stack named '{}' found", r.name)));
    }
    if !ctx.flags.has("--yes") && !ctx.interactive {
        return Err(Fail::new(
            2,
            "--yes must be passed in to proceed when running in non-interactive mode",
        ));
    }
    backend.clear_locks(&r)?;
    println!(
        "The currently running update for '{}' has been canceled!",
        r.name
    );
    Ok(())
}

/// What `up`, `refresh` and `destroy` do with a stack in common: project, backend, stack,
/// passphrase, lock.
pub struct Locked {
    pub program: Program,
    pub backend: Backend,
    pub stack: StackRef,
    pub crypter: Crypter,
    pub lock: PathBuf,
}

impl Locked {
    pub fn open(ctx: &Ctx) -> Res<Locked> {
        let program = ctx.project()?;
        let backend = ctx.backend()?;
        let stack = ctx.stack_ref(&program, &backend, false)?;
        if !backend.exists(&stack) {
            return Err(Fail::new(
                6,
                format!("no stack named '{}' found", stack.name),
            ));
        }
        let non_interactive = !ctx.interactive;
        if non_interactive && !ctx.flags.has("--yes") && !ctx.flags.has("--skip-preview") {
            return Err(Fail::new(
                2,
                "--yes or --skip-preview or --preview-only must be passed in to proceed when running in non-interactive mode",
            ));
        }
        let crypter = backend.crypter(&stack, &program, &ctx.need_passphrase()?)?;
        let lock = backend.lock(&stack)?;
        Ok(Locked {
            program,
            backend,
            stack,
            crypter,
            lock,
        })
    }

    pub fn unlock(&self) {
        let _ = std::fs::remove_file(&self.lock);
    }
}

/// Used by the program module to find the project file.
pub fn project_file(dir: &Path) -> Option<PathBuf> {
    ["Pulumi.yaml", "Pulumi.yml"]
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
}
