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
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::address::Address;
use crate::engine::blocking;
use crate::manifest;
use crate::plan::{Action, render};
use crate::provider;
use crate::state::{RunOutcome, Status};
use crate::value::Reveal;
use backend::{Backend, load, open_store};
use output::Printer;

#[derive(Parser, Debug)]
#[command(
    name = "tend",
    version,
    about = "Declarative reconciler: YAML manifests in, converged PostgreSQL out"
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
    /// State directory (sled store, key file, backups).
    #[arg(long, global = true, env = "TEND_STATE", default_value = "state")]
    state: PathBuf,
    /// The daemon's control socket [default: <state>/tend.sock].
    #[arg(long, global = true, env = "TEND_SOCKET")]
    socket: Option<PathBuf>,
    /// Turn colour off (also `NO_COLOR`; off anyway when stdout is not a terminal).
    #[arg(long, global = true)]
    no_color: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check every manifest and the dependency graph; touches nothing.
    Validate,
    /// Show what apply would do.
    Plan(PlanArgs),
    /// Converge: plan (or take a saved plan) and apply it.
    Apply(ApplyArgs),
    /// Print the dependency graph.
    Graph {
        #[arg(long, value_enum, default_value = "text")]
        format: GraphFormat,
    },
    /// Inspect or edit state.
    #[command(subcommand)]
    State(StateCmd),
    /// Past applies.
    #[command(subcommand)]
    Runs(RunsCmd),
    /// Watch the manifests, converge on every change, heal drift on a timer.
    Daemon(DaemonArgs),
    /// What the daemon is doing (or, with no daemon, what state holds).
    Status,
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
    /// First retry delay after a failed run; doubles up to 5 min.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    retry_base: Duration,
    /// Failed runs in a row after which retries stop until the manifests change.
    #[arg(long, default_value_t = 8)]
    stall_after: u32,
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
    List,
    /// One record (secrets masked).
    Show { address: Address },
    /// Forget a resource without touching the real object.
    Rm { address: Address },
    /// The whole state as JSON on stdout.
    Export {
        /// Include secrets, encrypted with the state key (importable with the same key file).
        #[arg(long)]
        include_secrets: bool,
    },
    /// Replace state with an export made with `--include-secrets` or a backup
    /// (`<state>/backup.json`, `backup.<serial>.json`); its MAC must match the key file.
    /// Also the way back when `<state>/db` was lost: it creates the store.
    Import {
        file: PathBuf,
        /// Accept a document without a MAC (made by a tend that did not sign backups). A MAC
        /// that does not match is refused all the same.
        #[arg(long)]
        allow_unsigned: bool,
    },
}

#[derive(Subcommand, Debug)]
enum RunsCmd {
    /// Recent runs, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One run with its per-resource results.
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

async fn run(cli: Cli, printer: Printer) -> anyhow::Result<Outcome> {
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| crate::daemon::control::default_socket(&cli.state));
    let connect = || backend::connect(&cli.manifests, &cli.state, &socket);
    match cli.command {
        Command::Validate => {
            let (set, _) = load(&cli.manifests)?;
            printer.out(&format!(
                "Success! {} manifests in {} are valid.",
                set.manifests.len(),
                cli.manifests.display()
            ));
            Ok(Outcome::Success)
        }
        Command::Graph { format } => {
            let (_, graph) = load(&cli.manifests)?;
            printer.out(&match format {
                GraphFormat::Text => graph.to_text(),
                GraphFormat::Dot => graph.to_dot(),
            });
            Ok(Outcome::Success)
        }
        Command::Plan(ref args) => plan_cmd(connect().await?.as_mut(), args, printer).await,
        Command::Apply(ref args) => apply_cmd(connect().await?.as_mut(), args, printer).await,
        Command::Status => status_cmd(connect().await?.as_mut(), &socket, printer).await,
        Command::Runs(ref cmd) => runs_cmd(connect().await?.as_mut(), cmd, printer).await,
        Command::State(cmd) => state_cmd(&cli.state, cmd, printer).await,
        Command::Daemon(args) => {
            let store = open_store(&cli.state)?;
            let opts = crate::daemon::Options {
                socket: socket.clone(),
                metrics_addr: args.metrics_addr,
                source: args.source,
                retry_base: args.retry_base,
                stall_after: args.stall_after,
                manifests: cli.manifests.clone(),
                resync: args.resync,
                prune: args.prune,
                max_prune: args.max_prune,
                approve: args.approve,
                parallelism: args.parallelism,
                debounce: Duration::from_millis(200),
                grace: args.grace,
            };
            let providers = crate::registry::providers(&provider::Context {
                state_dir: cli.state.clone(),
            });
            Ok(match crate::daemon::run(opts, store, providers).await? {
                0 => Outcome::Success,
                _ => Outcome::Failed,
            })
        }
    }
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
    let progress = Arc::new(move |line: String| printer.out(&line));
    let run = backend
        .apply(&plan, args.flags.parallelism, progress)
        .await?;
    let count = |actions: &[Action]| {
        run.results
            .iter()
            .filter(|r| r.outcome == RunOutcome::Applied && actions.contains(&r.action))
            .count()
    };
    let added = count(&[Action::Create, Action::Replace]);
    let changed = count(&[Action::Update]);
    let destroyed = count(&[Action::Delete, Action::Replace]);
    if run.exit_code == 0 {
        printer.out(&printer.style.bold(&format!(
            "\nApply complete! Resources: {added} added, {changed} changed, {destroyed} destroyed. (run {})",
            run.id
        )));
        Ok(Outcome::Success)
    } else {
        let mut s = format!(
            "\nApply finished with errors. Resources: {added} added, {changed} changed, {destroyed} destroyed. (run {})\n",
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

async fn state_cmd(dir: &Path, cmd: StateCmd, printer: Printer) -> anyhow::Result<Outcome> {
    let store = match cmd {
        StateCmd::Import { .. } => backend::open_store_to_restore(dir)?,
        _ => open_store(dir)?,
    };
    match cmd {
        StateCmd::List => {
            let records = blocking(&store, |s| s.list()).await?;
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
            if address.kind.as_str() == crate::provider::tenant::INSTANCE
                && address.parent.is_none() =>
        {
            let records = blocking(&store, |s| s.list()).await?;
            let children: Vec<_> = records
                .iter()
                .filter(|r| r.address.parent_address().as_ref() == Some(&address))
                .cloned()
                .collect();
            let Some(status) = crate::provider::tenant::status::statuses(&children).pop() else {
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
            // Signed, in the backup's form, so `state import` can check it.
            let doc = blocking(&store, |s| {
                let mut out = Vec::new();
                s.export_signed(&mut out)?;
                Ok(out)
            })
            .await?;
            printer.out(&String::from_utf8_lossy(&doc));
        }
        StateCmd::Export {
            include_secrets: false,
        } => {
            let doc = blocking(&store, move |s| s.export(false)).await?;
            printer.out(&serde_json::to_string_pretty(&doc)?);
        }
        StateCmd::Import {
            file,
            allow_unsigned,
        } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            blocking(&store, move |s| {
                s.import(&bytes, allow_unsigned)?;
                s.write_backup()
            })
            .await
            .with_context(|| format!("cannot import {}", file.display()))?;
            printer.out(&format!("Imported state from {}.", file.display()));
        }
    }
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
