//! The command line: `validate`, `plan`, `apply`, `graph`, `state …`, `runs …`. Parses
//! arguments, drives manifest → graph → plan → apply → state, and maps every outcome to an
//! exit code in one place (0 success, 1 error, 2 changes present with `--detailed-exitcode`).

pub mod output;

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::address::Address;
use crate::apply::{ApplyOptions, apply};
use crate::engine::{PlanOptions, blocking, plan};
use crate::graph::Graph;
use crate::manifest::{self, ManifestSet};
use crate::plan::{Action, Plan, render};
use crate::provider;
use crate::state::{RunOutcome, SledStore, StateError, StateStore, Status, Trigger};
use crate::value::Reveal;
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
    /// Replace state with an export made with `--include-secrets` (e.g. `backup.json`).
    Import { file: PathBuf },
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

/// A plan saved to a file, with what it was made against.
#[derive(Serialize, Deserialize)]
struct PlanFile {
    format: u32,
    lineage: String,
    serial: u64,
    manifests_digest: String,
    plan: Plan,
}

/// Entry point: every outcome becomes an exit code here.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Daemon(d) => init_logging("info", d.log_format == LogFormat::Json),
        _ => init_logging("warn", false),
    }
    let printer = Printer::new(cli.no_color);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            printer.err(&format!("error: cannot start the runtime: {e}"));
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli, printer)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            printer.err(&format!("error: {e:#}"));
            ExitCode::from(1)
        }
    }
}

fn init_logging(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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

/// Load manifests and the graph, or print every diagnostic.
fn load(dir: &Path, printer: &Printer) -> Option<(ManifestSet, Graph)> {
    let set = match manifest::load(dir) {
        Ok(set) => set,
        Err(errors) => {
            printer.err(&errors.to_string());
            return None;
        }
    };
    match Graph::build(&set) {
        Ok(g) => Some((set, g)),
        Err(diags) => {
            let e = manifest::LoadErrors(diags);
            printer.err(&e.to_string());
            None
        }
    }
}

fn open_store(dir: &Path) -> anyhow::Result<Arc<dyn StateStore>> {
    match SledStore::open(dir) {
        Ok(s) => Ok(Arc::new(s)),
        Err(e @ StateError::Locked(_)) => bail!("{e}"),
        Err(e) => Err(e).with_context(|| format!("cannot open state in {}", dir.display())),
    }
}

async fn run(cli: Cli, printer: Printer) -> anyhow::Result<u8> {
    let providers = provider::registry(&provider::Context {
        state_dir: cli.state.clone(),
    });
    let socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| crate::daemon::control::default_socket(&cli.state));
    if let Some(code) = through_daemon(&cli, &socket, printer).await? {
        return Ok(code);
    }
    match cli.command {
        Command::Validate => {
            let Some((set, _)) = load(&cli.manifests, &printer) else {
                return Ok(1);
            };
            printer.out(&format!(
                "Success! {} manifests in {} are valid.",
                set.manifests.len(),
                cli.manifests.display()
            ));
            Ok(0)
        }
        Command::Graph { format } => {
            let Some((_, graph)) = load(&cli.manifests, &printer) else {
                return Ok(1);
            };
            printer.out(&match format {
                GraphFormat::Text => graph.to_text(),
                GraphFormat::Dot => graph.to_dot(),
            });
            Ok(0)
        }
        Command::Plan(args) => {
            let Some((set, graph)) = load(&cli.manifests, &printer) else {
                return Ok(1);
            };
            let store = open_store(&cli.state)?;
            let plan = plan(&set, &graph, &store, &providers, &plan_options(&args.flags)).await?;
            if args.json {
                printer.out(&serde_json::to_string_pretty(&render::json(&plan))?);
            } else {
                printer.out(&render::text(&plan, printer.style));
            }
            if let Some(path) = &args.out {
                let meta = blocking(&store, |s| s.meta()).await?;
                let file = PlanFile {
                    format: 1,
                    lineage: meta.lineage,
                    serial: meta.serial,
                    manifests_digest: set.digest.clone(),
                    plan: plan.clone(),
                };
                write_private(path, &serde_json::to_vec_pretty(&file)?)?;
                if !args.json {
                    printer.out(&format!(
                        "Saved the plan to {}. Apply it with: tend apply {}",
                        path.display(),
                        path.display()
                    ));
                }
            }
            Ok(if !plan.errors.is_empty() {
                1
            } else if args.detailed_exitcode && plan.has_changes() {
                2
            } else {
                0
            })
        }
        Command::Apply(args) => {
            apply_cmd(&cli.manifests, &cli.state, args, &providers, printer).await
        }
        Command::State(cmd) => state_cmd(&cli.state, cmd, printer).await,
        Command::Runs(cmd) => runs_cmd(&cli.state, cmd, printer).await,
        Command::Status => {
            let store = open_store(&cli.state)?;
            let records = blocking(&store, |s| s.list()).await?;
            let runs = blocking(&store, |s| s.runs(1)).await?;
            let mut counts = std::collections::BTreeMap::new();
            for r in &records {
                *counts
                    .entry(format!("{:?}", r.status).to_lowercase())
                    .or_insert(0usize) += 1;
            }
            let mut out = format!(
                "No daemon is running (no answer on {}).\n",
                socket.display()
            );
            out.push_str(&format!("Resources in state: {}\n", counts_line(&counts)));
            if let Some(run) = runs.first() {
                out.push_str(&format!(
                    "Last run: {} (exit {}) {}\n",
                    run.id, run.exit_code, run.summary
                ));
            }
            for t in crate::tenants::statuses(&records) {
                out.push_str(&t.line());
                out.push('\n');
            }
            for r in records.iter().filter(|r| r.status != Status::Ready) {
                let class = r.error_class.map(|c| format!(" ({c})")).unwrap_or_default();
                out.push_str(&format!(
                    "  {} {:?}{class}: {}\n",
                    r.address,
                    r.status,
                    r.last_error.as_deref().unwrap_or("")
                ));
            }
            printer.out(&out);
            Ok(0)
        }
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
            crate::daemon::run(opts, store, providers).await
        }
    }
}

fn plan_options(f: &PlanFlags) -> PlanOptions {
    PlanOptions {
        refresh: f.refresh,
        targets: f.targets.clone(),
        parallelism: f.parallelism,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

async fn apply_cmd(
    manifests: &Path,
    state: &Path,
    args: ApplyArgs,
    providers: &[Arc<dyn provider::Provider>],
    printer: Printer,
) -> anyhow::Result<u8> {
    let Some((set, graph)) = load(manifests, &printer) else {
        return Ok(1);
    };
    let store = open_store(state)?;
    let plan = match &args.planfile {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read plan file {}", path.display()))?;
            let file: PlanFile = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a tend plan file", path.display()))?;
            let meta = blocking(&store, |s| s.meta()).await?;
            if file.lineage != meta.lineage || file.serial != meta.serial {
                printer.err("error: the saved plan is stale: state changed since it was made (run `tend plan --out` again)");
                return Ok(1);
            }
            if file.manifests_digest != set.digest {
                printer.err("error: the saved plan is stale: manifests changed since it was made (run `tend plan --out` again)");
                return Ok(1);
            }
            file.plan
        }
        None => plan(&set, &graph, &store, providers, &plan_options(&args.flags)).await?,
    };
    printer.out(&render::text(&plan, printer.style));
    if !plan.errors.is_empty() {
        return Ok(1);
    }
    if !plan.has_changes() {
        return Ok(0);
    }
    if args.planfile.is_none() && !args.auto_approve && !confirm(printer)? {
        return Ok(1);
    }
    printer.out("");
    let progress_printer = printer;
    let opts = ApplyOptions {
        parallelism: args.flags.parallelism,
        trigger: Trigger::Cli,
        progress: Arc::new(move |line| progress_printer.out(&line)),
        heartbeat: Duration::from_secs(10),
        revision: None,
    };
    let run = apply(&set, &graph, &plan, &store, providers, opts).await?;
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
        Ok(0)
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
        Ok(1)
    }
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

/// Ask the daemon, when one answers on the socket, for the commands it serves. `Ok(None)`:
/// no daemon (or a command it does not serve); go on locally.
async fn through_daemon(cli: &Cli, socket: &Path, printer: Printer) -> anyhow::Result<Option<u8>> {
    use crate::daemon::control::{ApplyReply, PlanReply, StatusReply, request};
    let (method, path) = match &cli.command {
        Command::Status => ("GET", "/v1/status".to_owned()),
        Command::Plan(_) => ("POST", "/v1/plan".to_owned()),
        Command::Apply(a) if a.planfile.is_none() => ("POST", "/v1/plan".to_owned()),
        Command::Runs(RunsCmd::List { limit }) => ("GET", format!("/v1/runs?limit={limit}")),
        Command::Runs(RunsCmd::Show { id }) => ("GET", format!("/v1/runs/{id}")),
        _ => return Ok(None),
    };
    let Some((status, body)) = request(socket, method, &path).await? else {
        return Ok(None);
    };
    if status != 200 {
        printer.err(&format!(
            "error: the daemon answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
        return Ok(Some(1));
    }
    match &cli.command {
        Command::Status => {
            let s: StatusReply = serde_json::from_slice(&body)?;
            let d = &s.daemon;
            let mut out = format!(
                "tend daemon (pid {}) watching {}\n{}: {}\n",
                d.pid, d.manifests, d.phase, d.summary
            );
            if let Some(rev) = &d.revision {
                out.push_str(&format!("Revision: {rev}\n"));
            }
            if d.failures > 0 {
                out.push_str(&format!("Failed runs in a row: {}\n", d.failures));
            }
            let retry_in = |at: u64| at.saturating_sub(crate::apply::now_ms()) / 1000;
            if let Some(at) = d.next_retry_at {
                out.push_str(&format!("Next retry in {}s\n", retry_in(at)));
            }
            out.push_str(&format!(
                "Resources in state: {}\n",
                counts_line(&s.resources)
            ));
            if let Some(run) = &d.last_run {
                out.push_str(&format!("Last run: {run}\n"));
            }
            for t in &s.tenants {
                out.push_str(&t.line());
                out.push('\n');
            }
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
            printer.out(&out);
            Ok(Some(0))
        }
        Command::Plan(args) => {
            if args.out.is_some() || !args.flags.targets.is_empty() || !args.flags.refresh {
                printer.err("error: a daemon holds the state: --out, --target and --refresh=false are not available through it");
                return Ok(Some(1));
            }
            let p: PlanReply = serde_json::from_slice(&body)?;
            if args.json {
                printer.out(&serde_json::to_string_pretty(&p.json)?);
            } else {
                printer.out(&p.text);
            }
            Ok(Some(if p.has_errors {
                1
            } else if args.detailed_exitcode && p.has_changes {
                2
            } else {
                0
            }))
        }
        Command::Apply(args) => {
            let p: PlanReply = serde_json::from_slice(&body)?;
            printer.out(&p.text);
            if p.has_errors {
                return Ok(Some(1));
            }
            if !p.has_changes {
                return Ok(Some(0));
            }
            if !args.auto_approve && !confirm(printer)? {
                return Ok(Some(1));
            }
            let Some((status, body)) = request(socket, "POST", "/v1/apply").await? else {
                printer.err("error: the daemon went away");
                return Ok(Some(1));
            };
            if status != 200 {
                printer.err(&format!(
                    "error: the daemon answered {status}: {}",
                    String::from_utf8_lossy(&body)
                ));
                return Ok(Some(1));
            }
            let a: ApplyReply = serde_json::from_slice(&body)?;
            printer.out(&a.text);
            Ok(Some(a.exit_code))
        }
        Command::Runs(RunsCmd::List { .. }) => {
            let runs: Vec<crate::state::Run> = serde_json::from_slice(&body)?;
            printer.out(&runs_table(&runs));
            Ok(Some(0))
        }
        Command::Runs(RunsCmd::Show { .. }) => {
            let run: serde_json::Value = serde_json::from_slice(&body)?;
            printer.out(&serde_json::to_string_pretty(&run)?);
            Ok(Some(0))
        }
        _ => Ok(None),
    }
}

/// Ask on a terminal; refuse without one. `Ok(true)` to go ahead.
fn confirm(printer: Printer) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        printer.err("error: refusing to apply without confirmation: stdin is not a terminal (use --auto-approve)");
        return Ok(false);
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

async fn state_cmd(dir: &Path, cmd: StateCmd, printer: Printer) -> anyhow::Result<u8> {
    let store = open_store(dir)?;
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
            if address.kind == crate::address::Kind::TenantInstance && address.parent.is_none() =>
        {
            let records = blocking(&store, |s| s.list()).await?;
            let children: Vec<_> = records
                .iter()
                .filter(|r| r.address.parent_address().as_ref() == Some(&address))
                .cloned()
                .collect();
            let Some(status) = crate::tenants::statuses(&children).pop() else {
                printer.err(&format!("error: {address} has nothing in state"));
                return Ok(1);
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
                printer.err(&format!("error: {address} is not in state"));
                return Ok(1);
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
                printer.err(&format!("error: {address} is not in state"));
                return Ok(1);
            }
            printer.out(&format!(
                "Removed {address} from state (the real object was not touched)."
            ));
        }
        StateCmd::Export { include_secrets } => {
            let doc = blocking(&store, move |s| s.export(include_secrets)).await?;
            printer.out(&serde_json::to_string_pretty(&doc)?);
        }
        StateCmd::Import { file } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let doc: serde_json::Value = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            blocking(&store, move |s| {
                s.import(&doc)?;
                s.write_backup()
            })
            .await?;
            printer.out(&format!("Imported state from {}.", file.display()));
        }
    }
    Ok(0)
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

async fn runs_cmd(dir: &Path, cmd: RunsCmd, printer: Printer) -> anyhow::Result<u8> {
    let store = open_store(dir)?;
    match cmd {
        RunsCmd::List { limit } => {
            let runs = blocking(&store, move |s| s.runs(limit)).await?;
            printer.out(&runs_table(&runs));
        }
        RunsCmd::Show { id } => {
            let i = id.clone();
            let Some(run) = blocking(&store, move |s| s.run(&i)).await? else {
                printer.err(&format!("error: no run {id}"));
                return Ok(1);
            };
            printer.out(&serde_json::to_string_pretty(&run)?);
        }
    }
    Ok(0)
}
