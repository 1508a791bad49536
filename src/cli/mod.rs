//! The command line: `validate`, `plan`, `apply`, `graph`, `state …`, `runs …`, `status`,
//! `daemon`. Parses arguments, writes `plan`, `apply`, `status` and `runs` once against a
//! [`Backend`] (this process's store, or a running daemon's socket), and maps every outcome to
//! an exit code in one place, [`exit_code`] (0 success, 1 error, 2 changes present with
//! `--detailed-exitcode`).

mod backend;
pub mod output;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::address::Address;
use crate::engine::blocking;
use crate::manifest;
use crate::plan::{Action, render};
use crate::provider;
use crate::state::PgTarget;
use crate::state::{RunOutcome, Status};
use crate::value::Reveal;
use backend::{Access, Backend, StateAt, load, open_store};
use output::Printer;

#[derive(Parser, Debug)]
#[command(
    name = "tend",
    version,
    about = "Declarative reconciler: YAML manifests in; PostgreSQL roles and databases, Nomad jobs and Pulumi stacks (and tenants composed of them) converged to match; a daemon that watches the manifests, heals drift and answers on a control socket",
    after_help = "Examples:\n  tend validate\n  tend plan && tend apply\n  tend daemon --prune --metrics-addr 127.0.0.1:9464"
)]
struct Cli {
    /// Directory of manifests.
    #[arg(
        long,
        global = true,
        env = "TEND_MANIFESTS",
        default_value = "manifests"
    )]
    manifests: PathBuf,
    /// Where state lives: a directory (sled store, key file, backups) or a PostgreSQL URL,
    /// `postgres://USER@HOST/DB?sslmode=require` (shared by several hosts; see `--work-dir`).
    #[arg(
        long,
        global = true,
        env = "TEND_STATE",
        default_value = "state",
        value_name = "DIR|URL"
    )]
    state: String,
    /// Read the `--state` URL from this file (e.g. a systemd credential:
    /// `LoadCredentialEncrypted=state-url` and `--state-url-file %d/state-url`).
    #[arg(long, global = true, env = "TEND_STATE_URL_FILE", value_name = "FILE")]
    state_url_file: Option<PathBuf>,
    /// With a PostgreSQL state: the schema that holds it.
    #[arg(long, global = true, env = "TEND_STATE_SCHEMA", default_value = crate::state::DEFAULT_SCHEMA)]
    state_schema: String,
    /// With a PostgreSQL state: how long a writer's lock outlives its last heartbeat (the
    /// server ends the lock's session after this long without one).
    #[arg(long, global = true, value_parser = humantime::parse_duration, default_value = "15s")]
    state_lease: Duration,
    /// With a PostgreSQL state: the local directory for the key file, the control socket and
    /// provider work files [default: state].
    #[arg(long, global = true, env = "TEND_WORK_DIR", value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// The daemon's control socket [default: <state>/tend.sock].
    #[arg(long, global = true, env = "TEND_SOCKET")]
    socket: Option<PathBuf>,
    /// A directory `fromFile` may read besides the manifests root and `$CREDENTIALS_DIRECTORY`
    /// (repeatable). Files read from it are always sensitive.
    #[arg(long = "secrets-dir", value_name = "DIR", global = true)]
    secrets_dirs: Vec<PathBuf>,
    /// Turn colour off (also `NO_COLOR`; off anyway when stdout is not a terminal).
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every manifest and the dependency graph without reading secrets; touches nothing.
    #[command(
        after_help = "Examples:\n  tend validate\n  tend validate --strict\n  tend --manifests ./manifests validate"
    )]
    Validate(ValidateArgs),
    /// Show what apply would do.
    #[command(
        after_help = "Examples:\n  tend plan\n  tend plan --json --detailed-exitcode\n  tend plan --target PostgresDatabase.app --out app.plan"
    )]
    Plan(PlanArgs),
    /// Converge: plan (or take a saved plan) and apply it.
    #[command(
        after_help = "Examples:\n  tend apply\n  tend apply --auto-approve\n  tend apply app.plan"
    )]
    Apply(ApplyArgs),
    /// Print the dependency graph.
    #[command(
        after_help = "Examples:\n  tend graph\n  tend graph --format dot | dot -Tsvg > graph.svg"
    )]
    Graph {
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
    },
    /// Inspect or edit state.
    #[command(
        after_help = "Examples:\n  tend state list\n  tend state show TenantInstance.acme\n  tend state export > state.json"
    )]
    #[command(subcommand)]
    State(StateCmd),
    /// Past applies.
    #[command(after_help = "Examples:\n  tend runs list --limit 5\n  tend runs show RUN_ID")]
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Watch the manifests, converge on every change, heal drift on a timer.
    #[command(
        after_help = "Examples:\n  tend daemon\n  tend daemon --prune --max-prune 5 --resync 10m\n  tend daemon --source git --approve manual --log-format json"
    )]
    Daemon(DaemonArgs),
    /// What the daemon is doing (or, with no daemon, what state holds).
    #[command(after_help = "Examples:\n  tend status\n  tend --socket /run/tend/tend.sock status")]
    Status,
    /// Record an object that exists outside tend's state as found, changing nothing.
    #[command(
        after_help = "Examples:\n  tend import PostgresDatabase.legacy legacy_app\n  tend import NomadJob.web web\n  tend plan   # then shows what applying the manifest changes"
    )]
    Import(ImportArgs),
    /// A recorded resource's outputs (sensitive ones masked unless --show-secrets).
    #[command(
        after_help = "Examples:\n  tend output PostgresDatabase.app\n  tend output PostgresDatabase.app --json\n  psql \"$(tend output TenantInstance.acme/PostgresDatabase url --raw --show-secrets)\""
    )]
    Output(OutputArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  tend completions bash > ~/.local/share/bash-completion/completions/tend\n  tend completions zsh > ~/.zfunc/_tend\n  tend completions fish > ~/.config/fish/completions/tend.fish"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), generated from the same definitions as --help.
    #[command(
        after_help = "Examples:\n  tend man > ~/.local/share/man/man1/tend.1\n  tend man | man -l -"
    )]
    Man,
}

#[derive(Args, Debug)]
struct ImportArgs {
    /// The resource, as the manifests declare it (e.g. `PostgresDatabase.legacy`).
    address: Address,
    /// The object's ID: a database's name, a Nomad job's ID.
    id: String,
    /// How long to wait for the system that holds the object.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Args, Debug)]
struct OutputArgs {
    /// The resource, e.g. `PostgresDatabase.app` or `TenantInstance.acme/PostgresDatabase`.
    address: Address,
    /// Only this output.
    name: Option<String>,
    /// As JSON: the one value, or every output with whether it is sensitive.
    #[arg(long, conflicts_with = "raw")]
    json: bool,
    /// The one value bare (no quotes, no name), for scripts.
    #[arg(long, requires = "name")]
    raw: bool,
    /// Show sensitive values (each read is logged: who, which address and key, never the value).
    #[arg(long)]
    show_secrets: bool,
}

#[derive(Args, Debug)]
struct ValidateArgs {
    /// Fail on warnings too (a credential's `fromEnv` variable or `fromFile` file missing).
    #[arg(long)]
    strict: bool,
}

#[derive(Args, Debug)]
struct DaemonArgs {
    /// Re-plan with refresh this often to heal drift.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    resync: Duration,
    /// Destroy resources whose manifests were removed (otherwise they are reported as orphaned).
    #[arg(long)]
    prune: bool,
    /// With --prune, a reload that would destroy more than this waits for `tend apply`.
    #[arg(long, default_value_t = 3)]
    max_prune: usize,
    /// `manual`: plans wait for `tend apply` instead of being applied.
    #[arg(long, value_enum, default_value = "auto")]
    approve: crate::daemon::Approve,
    /// Concurrent actions.
    #[arg(long, default_value_t = 10)]
    parallelism: usize,
    /// How long a running apply may finish after SIGTERM before it is cancelled.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// `git`: read the committed tree at HEAD of the work tree the manifests are in (a
    /// half-saved file or half-done checkout is never seen); runs record the revision.
    #[arg(long, value_enum, default_value = "files")]
    source: crate::daemon::Source,
    /// Serve Prometheus `/metrics` and `/healthz` on this TCP address (e.g. 127.0.0.1:9464).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the read-only status page on this TCP address (e.g. 127.0.0.1:9465); a
    /// non-loopback address needs --ui-token-file.
    #[arg(long)]
    ui_addr: Option<std::net::SocketAddr>,
    /// A file holding the token every status page request must carry (`Authorization: Bearer
    /// TOKEN` or `?token=TOKEN`).
    #[arg(long, value_name = "PATH", requires = "ui_addr")]
    ui_token_file: Option<PathBuf>,
    /// First retry delay after a failed run; doubles up to 5 min.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    retry_base: Duration,
    /// Failed runs in a row after which retries stop until the manifests change.
    #[arg(long, default_value_t = 8)]
    stall_after: u32,
    /// Deadline of one resource's refresh [default: the resource's own timeout].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    refresh_timeout: Option<Duration>,
    /// Log lines as text or JSON (journald takes either).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
struct PlanFlags {
    /// Read real systems to find drift (`--refresh=false` to trust state).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    refresh: bool,
    /// Only these resources and what they depend on (repeatable).
    #[arg(long = "target", value_name = "ADDR")]
    targets: Vec<Address>,
    /// Concurrent actions.
    #[arg(long, default_value_t = 10)]
    parallelism: usize,
    /// Deadline of one resource's refresh [default: the resource's own timeout]; past it the
    /// resource is planned from state, with a warning.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    refresh_timeout: Option<Duration>,
}

#[derive(Args, Debug)]
struct PlanArgs {
    #[command(flatten)]
    flags: PlanFlags,
    /// Machine-readable plan on stdout.
    #[arg(long)]
    json: bool,
    /// Save the plan for `tend apply FILE`.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Exit 0 for no changes, 1 for errors, 2 for changes.
    #[arg(long)]
    detailed_exitcode: bool,
}

#[derive(Args, Debug)]
struct ApplyArgs {
    /// A plan saved with `tend plan --out`.
    planfile: Option<PathBuf>,
    #[command(flatten)]
    flags: PlanFlags,
    /// Apply without asking.
    #[arg(long)]
    auto_approve: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GraphFormat {
    Text,
    Dot,
}

#[derive(Subcommand, Debug)]
enum StateCmd {
    /// Every recorded resource with its status.
    #[command(after_help = "Examples:\n  tend state list\n  tend --state /var/lib/tend state list")]
    List,
    /// One record (secrets masked).
    #[command(
        after_help = "Examples:\n  tend state show PostgresDatabase.app\n  tend state show TenantInstance.acme"
    )]
    Show { address: Address },
    /// Forget a resource without touching the real object.
    #[command(
        after_help = "Examples:\n  tend state rm PostgresDatabase.app\n  tend state rm TenantInstance.acme/NomadJob"
    )]
    Rm { address: Address },
    /// The whole state as JSON on stdout.
    #[command(
        after_help = "Examples:\n  tend state export > state.json\n  tend state export --include-secrets > backup.json"
    )]
    Export {
        /// Include secrets, encrypted with the state key (importable with the same key file).
        #[arg(long)]
        include_secrets: bool,
    },
    /// Replace state with an export made with `--include-secrets` or a backup
    /// (`<state>/backup.json`, `backup.<serial>.json`); its MAC must match the key file.
    /// Also the way back when `<state>/db` was lost: it creates the store.
    #[command(
        after_help = "Examples:\n  tend state import backup.json\n  tend state import state/backup.3.json\n  tend state import old-export.json --allow-unsigned"
    )]
    Import {
        /// The document: a backup or `state export --include-secrets`; `-` reads standard
        /// input.
        file: PathBuf,
        /// Accept a document without a MAC (made by a tend that did not sign backups). A MAC
        /// that does not match is refused all the same.
        #[arg(long)]
        allow_unsigned: bool,
    },
    /// Copy this state into another backend (a sled directory into PostgreSQL, or back),
    /// keeping its lineage, serial, runs and encrypted secrets; the source is left intact and
    /// refuses use from then on, so two stores never both act. The target must be empty and
    /// use the same key file.
    #[command(
        after_help = "Examples:\n  tend --state /var/lib/tend state migrate --to postgres://tend@db.internal/tend\n  tend --state postgres://tend@db.internal/tend state migrate --to /var/lib/tend-restored"
    )]
    Migrate {
        /// The target: a directory or a `postgres://` URL (its schema: `--to-schema`).
        #[arg(long, value_name = "DIR|URL")]
        to: String,
        /// With a PostgreSQL target: its schema.
        #[arg(long, default_value = crate::state::DEFAULT_SCHEMA)]
        to_schema: String,
    },
}

#[derive(Subcommand, Debug)]
enum RunsCmd {
    /// Recent runs, newest first.
    #[command(after_help = "Examples:\n  tend runs list\n  tend runs list --limit 5")]
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run with its per-resource results.
    #[command(
        after_help = "Examples:\n  tend runs show RUN_ID\n  tend runs show \"$(tend runs list --limit 1 | cut -d' ' -f1)\""
    )]
    Show { id: String },
}

/// How a command ended, before it becomes an exit code in [`exit_code`]. What went wrong has
/// been printed by then (a plan's errors, a failed apply's summary); an `Err` instead is
/// printed by [`exit_code`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Done: exit 0.
    Success,
    /// The plan has changes and `--detailed-exitcode` asks to say so: exit 2.
    Changes,
    /// Refused or failed, already reported: exit 1.
    Failed,
}

/// Entry point.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Daemon(d) => init_logging("info", d.log_format == LogFormat::Json),
        _ => init_logging("warn", false),
    }
    let printer = Printer::new(cli.no_color);
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
        .and_then(|runtime| runtime.block_on(run(cli, printer)));
    exit_code(outcome, printer)
}

/// The one place outcomes become exit codes: 0 success, 1 error, 2 changes present (with
/// `--detailed-exitcode`). An error is reported here: manifest diagnostics as they are, anything
/// else as `error: …` with its causes.
fn exit_code(outcome: anyhow::Result<Outcome>, printer: Printer) -> ExitCode {
    match outcome {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::Changes) => ExitCode::from(2),
        Ok(Outcome::Failed) => ExitCode::FAILURE,
        Err(e) => {
            match e.downcast_ref::<manifest::LoadErrors>() {
                Some(diagnostics) => printer.err(&diagnostics.to_string()),
                None => printer.err(&format!("error: {e:#}")),
            }
            ExitCode::FAILURE
        }
    }
}

fn init_logging(default: &str, json: bool) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Statements that carry password verifiers are logged by tokio-postgres at debug.
    for quiet in provider::postgres::QUIET_LOG_TARGETS {
        if let Ok(d) = quiet.parse() {
            filter = filter.add_directive(d);
        }
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .with_target(false);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `--state` (or `--state-url-file`) as a place.
fn state_at(cli: &Cli) -> anyhow::Result<StateAt> {
    let url = match &cli.state_url_file {
        Some(file) => Some(
            std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the state URL file {}", file.display()))?
                .trim()
                .to_owned(),
        ),
        None => PgTarget::is_url(&cli.state).then(|| cli.state.clone()),
    };
    Ok(match url {
        None => StateAt::Dir(PathBuf::from(&cli.state)),
        Some(url) => StateAt::Postgres {
            target: PgTarget::new(&url, &cli.state_schema)?,
            local: cli
                .work_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("state")),
            lease: cli.state_lease,
        },
    })
}

async fn run(cli: Cli, printer: Printer) -> anyhow::Result<Outcome> {
    let at = state_at(&cli)?;
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| crate::daemon::control::default_socket(at.local_dir()));
    let load_opts = crate::manifest::LoadOptions {
        secrets_dirs: cli.secrets_dirs.clone(),
        ..Default::default()
    };
    let connect = |access| backend::connect(&cli.manifests, &load_opts, &at, &socket, access);
    match cli.command {
        Command::Validate(args) => validate_cmd(&cli.manifests, &args, &load_opts, printer),
        Command::Graph { format } => {
            let (_, graph) = load(&cli.manifests, &load_opts)?;
            printer.out(&match format {
                GraphFormat::Text => graph.to_text(),
                GraphFormat::Dot => graph.to_dot(),
            });
            Ok(Outcome::Success)
        }
        Command::Plan(ref args) => {
            plan_cmd(connect(Access::Read).await?.as_mut(), args, printer).await
        }
        Command::Apply(ref args) => {
            let mut backend = connect(Access::Write("tend apply")).await?;
            apply_cmd(backend.as_mut(), args, printer).await
        }
        Command::Status => {
            status_cmd(connect(Access::Read).await?.as_mut(), &socket, printer).await
        }
        Command::Runs(ref cmd) => {
            runs_cmd(connect(Access::Read).await?.as_mut(), cmd, printer).await
        }
        Command::Output(ref args) => {
            output_cmd(connect(Access::Read).await?.as_mut(), args, printer).await
        }
        Command::Import(ref args) => {
            let mut backend = connect(Access::Write("tend import")).await?;
            let rec = backend
                .import(&args.address, &args.id, args.timeout)
                .await?;
            printer.out(&format!(
                "{}: imported {:?} as it is; nothing was changed. Run `tend plan` to see what applying its manifest would change.",
                rec.address, args.id
            ));
            Ok(Outcome::Success)
        }
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "tend", &mut buf);
            printer.out(&String::from_utf8(buf).context("the completion script is not UTF-8")?);
            Ok(Outcome::Success)
        }
        Command::Man => {
            let mut buf = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut buf)?;
            printer.out(&String::from_utf8(buf).context("the man page is not UTF-8")?);
            Ok(Outcome::Success)
        }
        Command::State(cmd) => state_cmd(&at, cmd, printer).await,
        Command::Daemon(args) => {
            // A daemon on a shared (PostgreSQL) state takes the writers' lock itself when it
            // is elected; a sled store is this process's alone either way.
            let store = open_store(&at, Access::Read)?;
            let opts = crate::daemon::Options {
                socket: socket.clone(),
                metrics_addr: args.metrics_addr,
                ui_addr: args.ui_addr,
                ui_token: match &args.ui_token_file {
                    Some(p) => Some(crate::daemon::read_ui_token(p)?),
                    None => None,
                },
                source: args.source,
                retry_base: args.retry_base,
                stall_after: args.stall_after,
                refresh_timeout: args.refresh_timeout,
                manifests: cli.manifests.clone(),
                load: load_opts.clone(),
                resync: args.resync,
                prune: args.prune,
                max_prune: args.max_prune,
                approve: args.approve,
                parallelism: args.parallelism,
                debounce: Duration::from_millis(200),
                grace: args.grace,
            };
            let providers = crate::registry::providers(&provider::Context {
                state_dir: at.local_dir().to_owned(),
            });
            Ok(match crate::daemon::run(opts, store, providers).await? {
                0 => Outcome::Success,
                _ => Outcome::Failed,
            })
        }
    }
}

/// Check the manifests without their secrets: a credential source that cannot be read is a
/// warning (an error with `--strict`, as it is in plan and apply).
fn validate_cmd(
    dir: &Path,
    args: &ValidateArgs,
    load_opts: &manifest::LoadOptions,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let opts = manifest::LoadOptions {
        secrets: manifest::Secrets::Optional,
        ..load_opts.clone()
    };
    let (set, _) = load(dir, &opts)?;
    if args.strict && !set.warnings.is_empty() {
        let errors = set.warnings.into_iter().map(|d| {
            let mut d = d;
            d.severity = manifest::diag::Severity::Error;
            d
        });
        return Err(manifest::LoadErrors(errors.collect()).into());
    }
    let mut warnings = String::new();
    for w in &set.warnings {
        warnings.push_str(&w.render());
        warnings.push('\n');
    }
    let n = set.warnings.len();
    if n > 0 {
        warnings.push_str(&format!(
            "{n} warning{} in manifests",
            if n == 1 { "" } else { "s" }
        ));
        printer.err(&warnings);
    }
    printer.out(&format!(
        "Success! {} manifests in {} are valid{}.",
        set.manifests.len(),
        dir.display(),
        match n {
            0 => String::new(),
            1 => " (1 warning)".to_owned(),
            _ => format!(" ({n} warnings)"),
        }
    ));
    Ok(Outcome::Success)
}

/// The plan, as text or JSON; with `--out` saved too.
async fn plan_cmd(
    backend: &mut dyn Backend,
    args: &PlanArgs,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let plan = backend.plan(&args.flags, args.out.is_some()).await?;
    if args.json {
        printer.out(&serde_json::to_string_pretty(&render::json(&plan))?);
    } else {
        printer.out(&render::text(&plan, printer.style));
    }
    if let Some(path) = &args.out {
        backend.save(&plan, path).await?;
        if !args.json {
            printer.out(&format!(
                "Saved the plan to {}. Apply it with: tend apply {}",
                path.display(),
                path.display()
            ));
        }
    }
    Ok(if !plan.errors.is_empty() {
        Outcome::Failed
    } else if args.detailed_exitcode && plan.has_changes() {
        Outcome::Changes
    } else {
        Outcome::Success
    })
}

/// Show the plan (fresh or saved), ask, apply, and sum up.
async fn apply_cmd(
    backend: &mut dyn Backend,
    args: &ApplyArgs,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let plan = match &args.planfile {
        Some(path) => backend.saved(path).await?,
        None => backend.plan(&args.flags, false).await?,
    };
    printer.out(&render::text(&plan, printer.style));
    if !plan.errors.is_empty() {
        return Ok(Outcome::Failed);
    }
    if !plan.has_changes() {
        return Ok(Outcome::Success);
    }
    if args.planfile.is_none() && !args.auto_approve && !confirm(printer)? {
        return Ok(Outcome::Failed);
    }
    printer.out("");
    let total = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .count();
    let live = output::Live::on_terminal(total).map(Arc::new);
    let progress: backend::Progress = match &live {
        Some(l) => {
            let l = Arc::clone(l);
            Arc::new(move |line: String| l.line(&line))
        }
        None => Arc::new(move |line: String| printer.out(&line)),
    };
    let ticker = live.as_ref().map(|l| {
        let l = Arc::clone(l);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                every.tick().await;
                l.tick();
            }
        })
    });
    let applied = backend.apply(&plan, args.flags.parallelism, progress).await;
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(l) = &live {
        l.finish();
    }
    let run = applied?;
    let count = |actions: &[Action]| {
        run.results
            .iter()
            .filter(|r| r.outcome == RunOutcome::Applied && actions.contains(&r.action))
            .count()
    };
    let added = count(&[Action::Create, Action::Replace]);
    let changed = count(&[Action::Update]);
    let destroyed = count(&[Action::Delete, Action::Replace]);
    let adopted = match count(&[Action::Adopt]) {
        0 => String::new(),
        n => format!("{n} adopted, "),
    };
    if run.exit_code == 0 {
        printer.out(&printer.style.bold(&format!(
            "\nApply complete! Resources: {adopted}{added} added, {changed} changed, {destroyed} destroyed. (run {})",
            run.id
        )));
        Ok(Outcome::Success)
    } else {
        let mut s = format!(
            "\nApply finished with errors. Resources: {adopted}{added} added, {changed} changed, {destroyed} destroyed. (run {})\n",
            run.id
        );
        for r in run.results.iter().filter(|r| !r.outcome.ok()) {
            s.push_str(&format!(
                "  {} {}: {}\n",
                r.outcome.as_str(),
                r.address,
                r.detail.as_deref().unwrap_or("")
            ));
        }
        printer.err(&s);
        Ok(Outcome::Failed)
    }
}

/// A resource's outputs: all or one, as text, JSON or one bare value.
async fn output_cmd(
    backend: &mut dyn Backend,
    args: &OutputArgs,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let address = &args.address;
    let Some(outputs) = backend
        .outputs(address, args.name.as_deref(), args.show_secrets)
        .await?
    else {
        if address.kind.as_str() == crate::provider::tenant::INSTANCE && address.parent.is_none() {
            bail!(
                "{address} is not in state: a tenant's outputs are its children's, e.g. {address}/PostgresDatabase"
            );
        }
        bail!("{address} is not in state");
    };
    let names = || outputs.keys().cloned().collect::<Vec<_>>().join(", ");
    if let Some(name) = &args.name {
        let Some(o) = outputs.get(name) else {
            bail!(
                "{address} has no output `{name}` (its outputs: {})",
                if outputs.is_empty() {
                    "none".to_owned()
                } else {
                    names()
                }
            );
        };
        if args.raw {
            if o.sensitive && !args.show_secrets {
                bail!("output `{name}` of {address} is sensitive: add --show-secrets to print it");
            }
            printer.out(&match &o.value {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            });
        } else if args.json {
            printer.out(&serde_json::to_string_pretty(&o.value)?);
        } else {
            printer.out(&output_line(name, o, name.len()));
        }
        return Ok(Outcome::Success);
    }
    if args.json {
        printer.out(&serde_json::to_string_pretty(&outputs)?);
        return Ok(Outcome::Success);
    }
    if outputs.is_empty() {
        printer.out(&format!("{address} has no outputs."));
        return Ok(Outcome::Success);
    }
    let width = outputs.keys().map(String::len).max().unwrap_or(0);
    let lines: Vec<String> = outputs
        .iter()
        .map(|(k, o)| output_line(k, o, width))
        .collect();
    printer.out(&lines.join("\n"));
    Ok(Outcome::Success)
}

/// `name = value`, a masked value shown bare as `(sensitive)`.
fn output_line(name: &str, o: &crate::daemon::control::OutputValue, width: usize) -> String {
    let masked =
        o.sensitive && o.value == serde_json::Value::String(crate::value::SENSITIVE.to_owned());
    let value = if masked {
        crate::value::SENSITIVE.to_owned()
    } else {
        o.value.to_string()
    };
    format!("{name:<width$} = {value}")
}

/// What the daemon is doing, or (with no daemon) what state holds.
async fn status_cmd(
    backend: &mut dyn Backend,
    socket: &Path,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let s = backend.status().await?;
    let retry_in = |at: u64| at.saturating_sub(crate::apply::now_ms()) / 1000;
    let mut out = String::new();
    match &s.daemon {
        Some(d) => {
            out.push_str(&format!(
                "tend daemon (pid {}) watching {}\n{}: {}\n",
                d.pid, d.manifests, d.phase, d.summary
            ));
            if let Some(rev) = &d.revision {
                out.push_str(&format!("Revision: {rev}\n"));
            }
            if !d.role.is_empty() {
                let leader = d.leader.as_deref().unwrap_or("(none right now)");
                out.push_str(&format!("Role: {} (leader: {leader})\n", d.role));
            }
            if d.failures > 0 {
                out.push_str(&format!("Failed runs in a row: {}\n", d.failures));
            }
            if let Some(at) = d.next_retry_at {
                out.push_str(&format!("Next retry in {}s\n", retry_in(at)));
            }
        }
        None => out.push_str(&format!(
            "No daemon is running (no answer on {}).\n",
            socket.display()
        )),
    }
    out.push_str(&format!(
        "Resources in state: {}\n",
        counts_line(&s.resources)
    ));
    if let Some(run) = &s.last_run {
        out.push_str(&format!("Last run: {run}\n"));
    }
    for t in &s.tenants {
        out.push_str(&t.line());
        out.push('\n');
    }
    if let Some(d) = &s.daemon {
        for o in &d.orphans {
            out.push_str(&format!(
                "Orphaned (manifest removed, kept without --prune): {o}\n"
            ));
        }
        for h in &d.held {
            out.push_str(&format!("Delete held for approval (`tend apply`): {h}\n"));
        }
        for f in &d.failed {
            let class = f.error_class.map_or("unclassified", |c| c.as_str());
            let next = match f.next_retry_at {
                Some(at) => format!("next retry in {}s", retry_in(at)),
                None if f.error_class == Some(provider::ErrorClass::Permanent) => {
                    "not retried until its manifest, credential or dependencies change (or `tend apply` / SIGHUP)".to_owned()
                }
                None => "no retry scheduled".to_owned(),
            };
            out.push_str(&format!(
                "Failed ({class}): {}: {}; {next}\n",
                f.address, f.error
            ));
        }
        for (address, said) in &d.activity {
            out.push_str(&format!("Applying: {address}: {said}\n"));
        }
        for stuck in &d.stuck {
            out.push_str(&format!(
                "Refresh timed out (planned from state): {stuck}\n"
            ));
        }
        for e in &d.load_errors {
            out.push_str(e);
        }
    }
    for u in &s.unready {
        out.push_str(&format!("  {u}\n"));
    }
    printer.out(&out);
    Ok(Outcome::Success)
}

fn counts_line(counts: &std::collections::BTreeMap<String, usize>) -> String {
    if counts.is_empty() {
        return "none".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ask on a terminal; refuse without one. `Ok(true)` to go ahead.
fn confirm(printer: Printer) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to apply without confirmation: stdin is not a terminal (use --auto-approve)"
        );
    }
    printer.out("Do you want to perform these actions?\n  Only 'yes' will be accepted to approve.\n\n  Enter a value: ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        printer.out("Apply cancelled.");
        return Ok(false);
    }
    Ok(true)
}

async fn state_cmd(at: &StateAt, cmd: StateCmd, printer: Printer) -> anyhow::Result<Outcome> {
    let store = match cmd {
        StateCmd::Import { .. } => backend::open_store_to_restore(at)?,
        StateCmd::Rm { .. } => open_store(at, Access::Write("tend state rm"))?,
        StateCmd::Migrate {
            ref to,
            ref to_schema,
        } => return migrate_cmd(at, to, to_schema, printer).await,
        _ => open_store(at, Access::Read)?,
    };
    match cmd {
        StateCmd::List => {
            // The records' heads are enough: nothing is decoded or decrypted.
            let records = blocking(&store, |s| s.list_heads()).await?;
            let mut s = String::new();
            for r in records {
                let status = match r.status {
                    Status::Ready => "ready",
                    Status::Failed => "failed",
                    Status::Applying => "applying",
                };
                s.push_str(&format!(
                    "{:<50} {status:<9} gen {}\n",
                    r.address.to_string(),
                    r.generation
                ));
            }
            printer.out(&s);
        }
        StateCmd::Show { address }
            if crate::provider::has_composition_status(address.kind.as_str())
                && address.parent.is_none() =>
        {
            let records = blocking(&store, |s| s.list()).await?;
            let children: Vec<_> = records
                .iter()
                .filter(|r| r.address.parent_address().as_ref() == Some(&address))
                .cloned()
                .collect();
            let Some(status) = crate::provider::composition_statuses(&children).pop() else {
                bail!("{address} has nothing in state");
            };
            let doc = serde_json::json!({
                "tenant": status,
                "children": children.iter().map(|r| serde_json::json!({
                    "address": r.address.to_string(),
                    "status": r.status,
                    "last_error": r.last_error,
                    "outputs": r.outputs.iter().map(|(k, v)| (k.clone(), v.to_json(Reveal::No))).collect::<serde_json::Map<_, _>>(),
                })).collect::<Vec<_>>(),
            });
            printer.out(&serde_json::to_string_pretty(&doc)?);
        }
        StateCmd::Show { address } => {
            let a = address.clone();
            let Some(r) = blocking(&store, move |s| s.get(&a)).await? else {
                bail!("{address} is not in state");
            };
            let json =
                |m: &std::collections::BTreeMap<String, crate::value::Value>| -> serde_json::Value {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.to_json(Reveal::No)))
                        .collect()
                };
            let doc = serde_json::json!({
                "address": r.address.to_string(),
                "status": r.status,
                "last_error": r.last_error,
                "error_class": r.error_class,
                "generation": r.generation,
                "prevent_destroy": r.prevent_destroy,
                "depends_on": r.depends_on.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "spec": r.spec.to_json(Reveal::No),
                "outputs": json(&r.outputs),
                "created_at": r.created_at,
                "updated_at": r.updated_at,
            });
            printer.out(&serde_json::to_string_pretty(&doc)?);
        }
        StateCmd::Rm { address } => {
            let a = address.clone();
            let existed = blocking(&store, move |s| {
                let had = s.get(&a)?.is_some();
                s.remove(&a)?;
                s.write_backup()?;
                Ok(had)
            })
            .await?;
            if !existed {
                bail!("{address} is not in state");
            }
            printer.out(&format!(
                "Removed {address} from state (the real object was not touched)."
            ));
        }
        StateCmd::Export {
            include_secrets: true,
        } => {
            // Signed, in the backup's form, so `state import` can check it; streamed.
            tokio::task::block_in_place(|| printer.out_stream(|out| store.export_signed(out)))?;
        }
        StateCmd::Export {
            include_secrets: false,
        } => {
            tokio::task::block_in_place(|| printer.out_stream(|out| store.export_plain(out)))?;
        }
        StateCmd::Import {
            file,
            allow_unsigned,
        } => {
            // Streamed: the store spools the document, checks its MAC, then reads it back
            // record by record (`-` is standard input, read once all the same).
            let mut input: Box<dyn std::io::Read + Send> = if file.as_os_str() == "-" {
                Box::new(std::io::stdin())
            } else {
                Box::new(
                    std::fs::File::open(&file)
                        .with_context(|| format!("cannot read {}", file.display()))?,
                )
            };
            blocking(&store, move |s| {
                s.import_from(&mut input, allow_unsigned)?;
                s.write_backup()
            })
            .await
            .with_context(|| format!("cannot import {}", file.display()))?;
            printer.out(&format!("Imported state from {}.", file.display()));
        }
        StateCmd::Migrate { .. } => unreachable!("answered before the store is opened"),
    }
    Ok(Outcome::Success)
}

/// `tend state migrate`: copy the whole state, then retire the source.
async fn migrate_cmd(
    at: &StateAt,
    to: &str,
    to_schema: &str,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    let target = if PgTarget::is_url(to) {
        StateAt::Postgres {
            target: PgTarget::new(to, to_schema)?,
            // The same key file as the source's: both must seal with one key.
            local: at.local_dir().to_owned(),
            lease: crate::state::DEFAULT_LEASE,
        }
    } else {
        StateAt::Dir(PathBuf::from(to))
    };
    if target.shown() == at.shown() {
        bail!("the migration target is the state itself");
    }
    let source = open_store(at, Access::Write("tend state migrate"))?;
    let source_key = crate::state::key_file(at.local_dir());
    if let StateAt::Dir(dir) = &target {
        // A new directory would mint its own key; it gets the source's instead.
        crate::state::share_key_file(&source_key, dir)
            .with_context(|| format!("cannot give {} the state key", dir.display()))?;
    }
    let dest = open_store(&target, Access::Write("tend state migrate"))?;
    if dest.digest_key() != source.digest_key() {
        bail!(
            "{} uses another key file than {}: the encrypted secrets would not open there \
             (use the same TEND_STATE_KEY_FILE or key file for both)",
            target.shown(),
            at.shown()
        );
    }
    let shown = target.shown();
    let (records, runs, lineage, serial) = blocking(&source, {
        let dest = Arc::clone(&dest);
        let shown = shown.clone();
        move |s| {
            let dump = s.dump()?;
            dest.load(&dump)?;
            s.mark_migrated(&shown)?;
            Ok((
                dump.records.len(),
                dump.runs.len(),
                dump.lineage,
                dump.serial,
            ))
        }
    })
    .await?;
    printer.out(&format!(
        "Migrated {records} resources and {runs} runs (lineage {lineage}, serial {serial}) from \
         {} to {shown}.\n{} now refuses use; run tend with --state {}.",
        at.shown(),
        at.shown(),
        target.arg_shown()
    ));
    Ok(Outcome::Success)
}

fn runs_table(runs: &[crate::state::Run]) -> String {
    let mut s = String::new();
    for r in runs {
        let failed = r.results.iter().filter(|x| !x.outcome.ok()).count();
        s.push_str(&format!(
            "{}  {:<6} exit {}  {:>5}ms  {} resources, {failed} not applied  {}\n",
            r.id,
            format!("{:?}", r.trigger).to_lowercase(),
            r.exit_code,
            r.ended_at.saturating_sub(r.started_at),
            r.results.len(),
            r.summary
        ));
    }
    s
}

async fn runs_cmd(
    backend: &mut dyn Backend,
    cmd: &RunsCmd,
    printer: Printer,
) -> anyhow::Result<Outcome> {
    match cmd {
        RunsCmd::List { limit } => printer.out(&runs_table(&backend.runs(*limit).await?)),
        RunsCmd::Show { id } => match backend.run(id).await? {
            Some(run) => printer.out(&serde_json::to_string_pretty(&run)?),
            None => bail!("no run {id}"),
        },
    }
    Ok(Outcome::Success)
}
