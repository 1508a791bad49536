//! `tend daemon`: the reconcile loop on a control host. One event loop over a closed
//! [`Event`] enum — manifests changed, resync due, retry due, reload (SIGHUP), shutdown
//! (SIGTERM / SIGINT) — so every trigger is visible in one place.
//!
//! Startup is not special: it is the first reload. A reload whose manifests fail to load keeps
//! the last good desired state and acts on nothing. Without `--prune`, resources whose
//! manifests were removed are reported as orphaned, never destroyed; with it, a reload that
//! would destroy more than `--max-prune` waits. It holds the state store for its lifetime.
//! It must not print to the terminal directly: it logs through `tracing`.

mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::address::Address;
use crate::apply::{ApplyOptions, apply};
use crate::engine::{PlanOptions, plan};
use crate::graph::Graph;
use crate::manifest;
use crate::plan::{Action, Plan};
use crate::provider::Provider;
use crate::state::{StateStore, Trigger};

/// Whether plans are applied as they come or wait for an operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Approve {
    Auto,
    Manual,
}

/// How the daemon runs.
#[derive(Clone, Debug)]
pub struct Options {
    pub manifests: PathBuf,
    pub resync: Duration,
    pub prune: bool,
    pub max_prune: usize,
    pub approve: Approve,
    pub parallelism: usize,
    /// Quiet period after the last file event before a reload.
    pub debounce: Duration,
    /// How long a running apply may finish after SIGTERM before it is cancelled.
    pub grace: Duration,
}

/// Everything that can wake the loop.
#[derive(Debug)]
pub enum Event {
    /// Something changed under the manifests directory (a trigger only; the tree is rescanned).
    ManifestsChanged,
    /// The periodic resync with refresh.
    Resync,
    /// A failed run's backoff expired.
    RetryDue,
    /// SIGHUP: reload now.
    Reload,
    /// SIGTERM or SIGINT.
    Shutdown,
}

/// The daemon's memory between reloads.
struct Daemon {
    opts: Options,
    store: Arc<dyn StateStore>,
    providers: Vec<Arc<dyn Provider>>,
    /// Digest of the last manifests that loaded, and whether the last run left failures.
    last_good: Option<String>,
    failures: u32,
    retry_at: Option<tokio::time::Instant>,
}

/// Run until SIGTERM. Returns the exit code.
pub async fn run(
    opts: Options,
    store: Arc<dyn StateStore>,
    providers: Vec<Arc<dyn Provider>>,
) -> anyhow::Result<u8> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let _watcher = watch::start(&opts.manifests, tx.clone())?;
    spawn_signals(tx.clone())?;
    let watchdog = spawn_watchdog();

    let mut d = Daemon {
        opts,
        store,
        providers,
        last_good: None,
        failures: 0,
        retry_at: None,
    };
    tracing::info!(manifests = %d.opts.manifests.display(), resync = ?d.opts.resync, prune = d.opts.prune, "tend daemon starting");
    let mut resync = tokio::time::interval(d.opts.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    resync.tick().await; // the first tick is now: startup reloads below instead
    if d.reconcile("startup", &mut rx).await == Flow::Stop {
        return Ok(stop(watchdog));
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);

    loop {
        let retry = async {
            match d.retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let event = tokio::select! {
            e = rx.recv() => e.unwrap_or(Event::Shutdown),
            _ = resync.tick() => Event::Resync,
            () = retry => Event::RetryDue,
        };
        let why = match event {
            Event::Shutdown => return Ok(stop(watchdog)),
            Event::ManifestsChanged => {
                if debounce(&mut rx, d.opts.debounce).await == Flow::Stop {
                    return Ok(stop(watchdog));
                }
                "manifests changed"
            }
            Event::Resync => "resync",
            Event::RetryDue => "retry",
            Event::Reload => "SIGHUP",
        };
        if d.reconcile(why, &mut rx).await == Flow::Stop {
            return Ok(stop(watchdog));
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Wait until no file event has arrived for `quiet`; a burst (a git checkout) is one reload.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<Event>, quiet: Duration) -> Flow {
    loop {
        match tokio::time::timeout(quiet, rx.recv()).await {
            Err(_) => return Flow::Continue,
            Ok(None | Some(Event::Shutdown)) => return Flow::Stop,
            Ok(Some(_)) => {}
        }
    }
}

fn stop(watchdog: tokio::task::JoinHandle<()>) -> u8 {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    watchdog.abort();
    tracing::info!("tend daemon stopped");
    0
}

fn spawn_signals(tx: mpsc::UnboundedSender<Event>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            let e = tokio::select! {
                _ = hup.recv() => Event::Reload,
                _ = term.recv() => Event::Shutdown,
                _ = int.recv() => Event::Shutdown,
            };
            if tx.send(e).is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec=`), if it asked.
fn spawn_watchdog() -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(every) = sd_notify::watchdog_enabled() else {
            return;
        };
        let mut tick = tokio::time::interval(every / 2);
        loop {
            tick.tick().await;
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
        }
    })
}

fn status(line: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(line)]);
}

/// Remove what the daemon may not destroy on its own from a plan, saying why.
fn hold_back_deletes(plan: &mut Plan, prune: bool, max_prune: usize) -> Vec<Address> {
    let deletes: Vec<Address> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Delete)
        .map(|c| c.address.clone())
        .collect();
    if deletes.is_empty() {
        return deletes;
    }
    if !prune {
        tracing::warn!(orphans = ?deletes.iter().map(ToString::to_string).collect::<Vec<_>>(), "resources whose manifests were removed are orphaned (run with --prune to destroy them)");
    } else if deletes.len() > max_prune {
        tracing::warn!(
            count = deletes.len(),
            max_prune,
            "this reload would destroy more than --max-prune resources: holding the deletes until approved with `tend apply`"
        );
    } else {
        return Vec::new();
    }
    plan.drop_changes(&deletes);
    deletes
}

impl Daemon {
    /// Load, plan and (unless held) apply. Shutdown during an apply waits up to the grace
    /// period, then cancels.
    async fn reconcile(&mut self, why: &str, rx: &mut mpsc::UnboundedReceiver<Event>) -> Flow {
        let set = match manifest::load(&self.opts.manifests) {
            Ok(set) => set,
            Err(errors) => {
                self.last_good = None;
                tracing::error!(
                    reason = why,
                    errors = errors.0.len(),
                    "manifests failed to load; keeping the last good state and acting on nothing\n{errors}"
                );
                status(&format!("frozen: {} manifest errors", errors.0.len()));
                return Flow::Continue;
            }
        };
        let graph = match Graph::build(&set) {
            Ok(g) => g,
            Err(diags) => {
                self.last_good = None;
                let e = manifest::LoadErrors(diags);
                tracing::error!(
                    reason = why,
                    "manifests failed to load; keeping the last good state and acting on nothing\n{e}"
                );
                status("frozen: dependency cycle");
                return Flow::Continue;
            }
        };
        if why == "manifests changed" && self.last_good.as_deref() == Some(set.digest.as_str()) {
            tracing::debug!("manifests unchanged after rescan");
            return Flow::Continue;
        }
        self.last_good = Some(set.digest.clone());
        let opts = PlanOptions {
            refresh: true,
            targets: Vec::new(),
            parallelism: self.opts.parallelism,
        };
        let mut plan = match plan(&set, &graph, &self.store, &self.providers, &opts).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(reason = why, error = %format!("{e:#}"), "planning failed");
                self.schedule_retry();
                return Flow::Continue;
            }
        };
        let held = hold_back_deletes(&mut plan, self.opts.prune, self.opts.max_prune);
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        if !plan.errors.is_empty() {
            for e in &plan.errors {
                tracing::error!("{e}");
            }
            status("error: the plan cannot be applied");
            return Flow::Continue;
        }
        let summary = plan.summary().line();
        if !plan.has_changes() {
            tracing::info!(reason = why, held = held.len(), "no changes");
            status(&format!("in sync ({} resources)", set.managed().count()));
            self.failures = 0;
            self.retry_at = None;
            return Flow::Continue;
        }
        if self.opts.approve == Approve::Manual {
            tracing::info!(
                reason = why,
                "{summary} Waiting for approval (--approve manual)"
            );
            status(&format!("waiting for approval: {summary}"));
            return Flow::Continue;
        }
        tracing::info!(reason = why, "{summary}");
        status(&format!("applying: {summary}"));
        let apply_opts = ApplyOptions {
            parallelism: self.opts.parallelism,
            trigger: Trigger::Daemon,
            progress: Arc::new(|line| tracing::info!("{line}")),
            heartbeat: Duration::from_secs(10),
            revision: None,
        };
        let (store, providers) = (Arc::clone(&self.store), self.providers.clone());
        let run = apply(&set, &graph, &plan, &store, &providers, apply_opts);
        tokio::pin!(run);
        let result = loop {
            tokio::select! {
                r = &mut run => break Some(r),
                e = rx.recv() => match e {
                    None | Some(Event::Shutdown) => {
                        tracing::info!(grace = ?self.opts.grace, "shutting down: letting the running apply finish");
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                        match tokio::time::timeout(self.opts.grace, &mut run).await {
                            Ok(r) => {
                                self.log_run(r);
                            }
                            Err(_) => tracing::warn!("grace period over: cancelling the running apply (its resources stay `applying` and are refreshed at the next start)"),
                        }
                        return Flow::Stop;
                    }
                    // Other events during an apply are folded into the next reconcile.
                    Some(_) => {}
                },
            }
        };
        if let Some(r) = result {
            self.log_run(r);
        }
        Flow::Continue
    }

    fn log_run(&mut self, r: anyhow::Result<crate::state::Run>) {
        match r {
            Ok(run) if run.exit_code == 0 => {
                tracing::info!(run = %run.id, "{}", "apply complete");
                status(&format!("in sync (run {})", run.id));
                self.failures = 0;
                self.retry_at = None;
            }
            Ok(run) => {
                let failed: Vec<String> = run
                    .results
                    .iter()
                    .filter(|r| r.outcome == "failed" || r.outcome == "blocked")
                    .map(|r| format!("{} ({})", r.address, r.detail.clone().unwrap_or_default()))
                    .collect();
                tracing::error!(run = %run.id, failed = ?failed, "apply finished with failures");
                status(&format!(
                    "degraded: {} resources failed (run {})",
                    failed.len(),
                    run.id
                ));
                self.schedule_retry();
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "apply failed");
                self.schedule_retry();
            }
        }
    }

    /// Capped exponential backoff with jitter: 5 s, 10 s, 20 s … 5 min.
    fn schedule_retry(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let base =
            Duration::from_secs(5).saturating_mul(1 << self.failures.min(6).saturating_sub(1));
        let capped = base.min(Duration::from_secs(300));
        let jitter =
            Duration::from_millis(rand::random::<u64>() % (capped.as_millis() as u64 / 5 + 1));
        let delay = capped + jitter;
        tracing::info!(
            attempt = self.failures,
            ?delay,
            "retrying failed resources later"
        );
        self.retry_at = Some(tokio::time::Instant::now() + delay);
    }
}
