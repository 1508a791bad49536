//! `tend daemon`: the reconcile loop on a control host. One event loop over a closed
//! [`Event`] enum — manifests changed, resync due, retry due, reload (SIGHUP), shutdown
//! (SIGTERM / SIGINT) — so every trigger is visible in one place.
//!
//! Startup is not special: it is the first reload. A reload whose manifests fail to load keeps
//! the last good desired state and acts on nothing. Without `--prune`, resources whose
//! manifests were removed are reported as orphaned, never destroyed; with it, a reload that
//! would destroy more than `--max-prune` waits. It holds the state store for its lifetime.
//! It must not print to the terminal directly: it logs through `tracing`.

pub mod control;
mod git;
mod metrics;
mod ui;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::watch as flag;

use crate::address::Address;
use crate::apply::now_ms;
use crate::apply::{ApplyOptions, apply, inputs_digest};
use crate::desired::Resolver;
use crate::engine::{PlanOptions, blocking, plan};
use crate::graph::Graph;
use crate::manifest;
use crate::manifest::ManifestSet;
use crate::plan::{Action, Plan};
use crate::provider::{ErrorClass, Provider};
use crate::state::{Lead, Record, RunOutcome, StateStore, Status, Trigger};
use control::{ApplyReply, Control, DaemonStatus, Echo, FailedResource};
pub use ui::read_token as read_ui_token;

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
    /// How credentials' files are read (`--secrets-dir`).
    pub load: manifest::LoadOptions,
    pub resync: Duration,
    pub prune: bool,
    pub max_prune: usize,
    pub approve: Approve,
    pub parallelism: usize,
    /// Quiet period after the last file event before a reload.
    pub debounce: Duration,
    /// How long a running apply may finish after SIGTERM before it is cancelled.
    pub grace: Duration,
    /// The control socket.
    pub socket: PathBuf,
    /// Where to serve `/metrics` and `/healthz`, if anywhere.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Where to serve the status page, if anywhere, and the token its requests must carry.
    pub ui_addr: Option<std::net::SocketAddr>,
    pub ui_token: Option<String>,
    /// Read the work tree, or the commit at HEAD.
    pub source: Source,
    /// First retry delay after a failed run (doubles, capped at 5 min).
    pub retry_base: Duration,
    /// Failed runs in a row after which retries stop until the manifests change.
    pub stall_after: u32,
    /// Deadline of one resource's refresh (`None`: the resource's own timeout).
    pub refresh_timeout: Option<Duration>,
}

/// Where manifests are read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Source {
    /// The files in the directory.
    Files,
    /// The committed tree at HEAD of the git work tree the directory is in.
    Git,
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
    /// A client on the control socket.
    Control(Control),
    /// This daemon no longer holds the state's writers' lock (its lease ran out, its session
    /// was cut): stop acting at once.
    Demoted,
}

/// Why the loop reloads (logged as `reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reason {
    Startup,
    ManifestsChanged,
    /// Files changed while an apply ran.
    ChangedDuringApply,
    Resync,
    Retry,
    Sighup,
    TendPlan,
    TendApply,
    /// This daemon took the lead of a shared state.
    Elected,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Startup => "startup",
            Reason::ManifestsChanged => "manifests changed",
            Reason::ChangedDuringApply => "manifests changed after an apply",
            Reason::Resync => "resync",
            Reason::Retry => "retry",
            Reason::Sighup => "SIGHUP",
            Reason::TendPlan => "tend plan",
            Reason::TendApply => "tend apply",
            Reason::Elected => "elected leader",
        }
    }

    /// An operator's doing (starting the daemon, SIGHUP, `tend apply`): it also retries
    /// resources that failed permanently with nothing changed since.
    fn by_operator(self) -> bool {
        matches!(
            self,
            Reason::Startup | Reason::Sighup | Reason::TendApply | Reason::Elected
        )
    }
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
    status: Arc<Mutex<DaemonStatus>>,
    /// A trigger that arrived during an apply, run right after it.
    pending: Option<Reason>,
    metrics: Arc<metrics::Metrics>,
    /// With `--source git`: the repository, and the revision of the last load.
    repo: Option<git::Repo>,
    revision: Option<String>,
    /// The manifests digest at which retries stalled.
    stalled: Option<String>,
    /// Turns true on SIGTERM/SIGINT, so a refresh in progress is abandoned at once (the
    /// event itself waits in the channel until the loop reads it).
    shutdown: flag::Receiver<bool>,
    /// With a shared state: turns true when this daemon loses the lead (a fresh flag per
    /// term), so a refresh in progress is abandoned at once; the `Demoted` event follows.
    demoted: flag::Receiver<bool>,
    /// Where the leadership watcher sends `Demoted`.
    tx: mpsc::UnboundedSender<Event>,
}

/// Run until SIGTERM. Returns the exit code.
pub async fn run(
    opts: Options,
    store: Arc<dyn StateStore>,
    providers: Vec<Arc<dyn Provider>>,
) -> anyhow::Result<u8> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let repo = match opts.source {
        Source::Git => Some(git::Repo::open(&opts.manifests)?),
        Source::Files => None,
    };
    let _watcher = match &repo {
        Some(r) => {
            let repo = r.clone();
            watch::start(&r.git_dir, move |p| repo.is_ref_change(p), tx.clone())?
        }
        None => watch::files(&opts.manifests, tx.clone())?,
    };
    let (shutdown_tx, shutdown) = flag::channel(false);
    spawn_signals(tx.clone(), shutdown_tx)?;
    let watchdog = spawn_watchdog();
    let status = Arc::new(Mutex::new(DaemonStatus {
        pid: std::process::id(),
        manifests: opts.manifests.display().to_string(),
        phase: "starting".into(),
        ..DaemonStatus::default()
    }));
    let server = control::serve(
        &opts.socket,
        Arc::clone(&status),
        Arc::clone(&store),
        tx.clone(),
    )?;
    let metrics = Arc::new(metrics::Metrics::default());
    let metrics_server = match opts.metrics_addr {
        Some(addr) => Some(
            metrics::serve(
                addr,
                Arc::clone(&metrics),
                Arc::clone(&status),
                Arc::clone(&store),
            )
            .await?,
        ),
        None => None,
    };
    let ui_server = match opts.ui_addr {
        Some(addr) => Some(
            ui::serve(
                addr,
                opts.ui_token.clone(),
                Arc::clone(&status),
                Arc::clone(&store),
            )
            .await?,
        ),
        None => None,
    };
    let socket = opts.socket.clone();
    let _cleanup = scopeguard(move || {
        server.abort();
        if let Some(m) = metrics_server {
            m.abort();
        }
        if let Some(u) = ui_server {
            u.abort();
        }
        let _ = std::fs::remove_file(&socket);
    });

    let (_, demoted) = flag::channel(false);
    let mut d = Daemon {
        opts,
        store,
        providers,
        last_good: None,
        failures: 0,
        retry_at: None,
        status,
        pending: None,
        metrics,
        repo,
        revision: None,
        stalled: None,
        shutdown,
        demoted,
        tx: tx.clone(),
    };
    tracing::info!(manifests = %d.opts.manifests.display(), resync = ?d.opts.resync, prune = d.opts.prune, "tend daemon starting");
    let shared = d.store.leadership().is_some();
    if shared {
        // A standby serves status and health: ready for systemd before it leads.
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    } else {
        d.metrics.leading(true);
    }
    loop {
        let why = if shared {
            match d.stand_by(&mut rx).await {
                Flow::Continue => Reason::Elected,
                _ => return Ok(stop(watchdog)),
            }
        } else {
            Reason::Startup
        };
        match d.lead(why, &mut rx).await {
            Flow::Demoted => d.step_down(),
            _ => return Ok(stop(watchdog)),
        }
    }
}

/// Hand the heap a finished load, plan or apply freed back to the OS. glibc keeps freed memory
/// in per-thread arenas (every tokio worker gets one) and returns little of it by itself, so a
/// daemon's RSS would otherwise stay at the peak of the largest run it ever made. The `tend`
/// binary allocates with jemalloc, which purges freed pages at once (`src/main.rs`), so there
/// this trims only what glibc still holds; it matters where the library runs on glibc's malloc.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
    /// The lead was lost: stop acting, back to standby.
    Demoted,
}

/// Wait until no file event has arrived for `quiet`; a burst (a git checkout) is one reload.
async fn debounce(rx: &mut mpsc::UnboundedReceiver<Event>, quiet: Duration) -> Flow {
    loop {
        match tokio::time::timeout(quiet, rx.recv()).await {
            Err(_) => return Flow::Continue,
            Ok(None | Some(Event::Shutdown)) => return Flow::Stop,
            Ok(Some(Event::Demoted)) => return Flow::Demoted,
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

fn spawn_signals(
    tx: mpsc::UnboundedSender<Event>,
    shutdown: flag::Sender<bool>,
) -> anyhow::Result<()> {
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
            if matches!(e, Event::Shutdown) {
                shutdown.send_replace(true);
            }
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

/// Run `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

/// What a reload found: a plan, or nothing to act on.
struct Prepared {
    set: ManifestSet,
    graph: Graph,
    plan: Plan,
}

/// Keep what each running action last said in the status (`tend status`, the status page): an
/// action's start sets it, a provider's own line replaces it, its end clears it.
fn note_activity(status: &Mutex<DaemonStatus>, line: &str) {
    let Ok(mut s) = status.lock() else { return };
    match crate::apply::progress_step(line) {
        Some((address, crate::apply::Step::Started)) => {
            s.activity.insert(address.to_owned(), "started".to_owned());
        }
        Some((address, _)) => {
            s.activity.remove(address);
        }
        None => {
            if let Some((address, said)) = line.split_once(": ")
                && let Some(entry) = s.activity.get_mut(address)
            {
                *entry = said.to_owned();
            }
        }
    }
}

/// A client asking a daemon that does not lead: told who does.
fn refuse_as_standby(c: Control, why: &str) {
    let msg = format!("{why}; ask the leader's host");
    match c {
        Control::Plan(reply) => {
            let _ = reply.send(Err(msg));
        }
        Control::Apply(reply) => {
            let _ = reply.send(Err(msg));
        }
    }
}

impl Daemon {
    /// Reconcile and follow events until shutdown (`Stop`) or, with a shared state, until the
    /// lead is lost (`Demoted`). `why`: startup, or this daemon's election.
    async fn lead(&mut self, why: Reason, rx: &mut mpsc::UnboundedReceiver<Event>) -> Flow {
        let mut resync = tokio::time::interval(self.opts.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        resync.tick().await; // the first tick is now: the reconcile below instead
        let flow = self.reconcile(why, rx).await;
        if flow != Flow::Continue {
            return flow;
        }
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        loop {
            release_freed_memory();
            if let Some(why) = self.pending.take() {
                let flow = self.reconcile(why, rx).await;
                if flow != Flow::Continue {
                    return flow;
                }
                continue;
            }
            let retry_at = self.retry_at;
            let retry = async {
                match retry_at {
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
                Event::Shutdown => return Flow::Stop,
                Event::Demoted => return Flow::Demoted,
                Event::ManifestsChanged => {
                    let flow = debounce(rx, self.opts.debounce).await;
                    if flow != Flow::Continue {
                        return flow;
                    }
                    Reason::ManifestsChanged
                }
                Event::Resync => Reason::Resync,
                Event::RetryDue => Reason::Retry,
                Event::Reload => Reason::Sighup,
                Event::Control(Control::Plan(reply)) => {
                    let _ = reply.send(self.plan_for_client().await);
                    continue;
                }
                Event::Control(Control::Apply(reply)) => {
                    let (flow, result) = self.apply_for_client(rx).await;
                    let _ = reply.send(result);
                    if flow != Flow::Continue {
                        return flow;
                    }
                    continue;
                }
            };
            let flow = self.reconcile(why, rx).await;
            if flow != Flow::Continue {
                return flow;
            }
        }
    }

    /// With a shared state: wait, serving status, until this daemon takes the writers' lock.
    /// Tries at once, then every `poll` (a tenth of the lease, at most a second), so a leader
    /// that died hands over within its lease plus one poll. `Continue` once leading; `Stop` on
    /// shutdown.
    async fn stand_by(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) -> Flow {
        let Some(lease) = self.store.leadership().map(|l| l.lease()) else {
            return Flow::Continue;
        };
        let poll = (lease / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
        self.metrics.leading(false);
        let mut refusal = "this daemon is a standby".to_owned();
        loop {
            let store = Arc::clone(&self.store);
            let tried = tokio::task::spawn_blocking(move || match store.leadership() {
                Some(l) => l.try_lead("tend daemon"),
                None => Ok(Lead::Leading { epoch: 0 }),
            })
            .await;
            match tried {
                Ok(Ok(Lead::Leading { epoch })) => {
                    tracing::info!(epoch, "took the lead of the state");
                    if epoch > 1 {
                        self.metrics.failover();
                    }
                    self.metrics.leading(true);
                    self.update(|s| {
                        s.role = "leader".into();
                        s.leader = Some("this daemon".into());
                    });
                    self.watch_lead(lease);
                    return Flow::Continue;
                }
                Ok(Ok(Lead::Follower(holder))) => {
                    refusal = format!("this daemon is a standby; the state is led by {holder}");
                    let summary = format!("standby: the state is led by {holder}");
                    self.update(move |s| {
                        s.role = "standby".into();
                        s.leader = Some(holder);
                        s.phase = "standby".into();
                        s.summary = summary;
                    });
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    tracing::warn!(error = %msg, "cannot reach the state to take the lead");
                    self.update(move |s| {
                        s.role = "standby".into();
                        s.phase = "degraded".into();
                        s.summary = format!("standby, cannot reach the state: {msg}");
                    });
                }
                Err(e) => tracing::error!(error = %e, "the leadership check did not finish"),
            }
            let wait = tokio::time::sleep(poll);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    e = rx.recv() => match e {
                        None | Some(Event::Shutdown) => return Flow::Stop,
                        Some(Event::Control(c)) => refuse_as_standby(c, &refusal),
                        // The checkout is read when this daemon leads.
                        Some(_) => {}
                    },
                }
            }
        }
    }

    /// Watch the lead while this daemon has it: as soon as the store says it is gone (or its
    /// lease ran out by this process's clock, e.g. after a pause), flag the loss and wake the
    /// loop, checking every twentieth of the lease.
    fn watch_lead(&mut self, lease: Duration) {
        let (lost_tx, lost) = flag::channel(false);
        self.demoted = lost;
        let (store, tx) = (Arc::clone(&self.store), self.tx.clone());
        let every = (lease / 20).clamp(Duration::from_millis(20), Duration::from_millis(500));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let leading = store.leadership().is_some_and(|l| l.leading());
                if !leading {
                    lost_tx.send_replace(true);
                    let _ = tx.send(Event::Demoted);
                    return;
                }
                if tx.is_closed() {
                    return;
                }
            }
        });
    }

    /// Back to standby after losing the lead: give the lock up for good (its session ends).
    fn step_down(&mut self) {
        tracing::warn!("lost the lead of the state; standing by");
        if let Some(l) = self.store.leadership() {
            l.step_down();
        }
        self.metrics.leading(false);
        self.pending = None;
        self.retry_at = None;
        self.last_good = None;
        self.update(|s| {
            s.role = "standby".into();
            s.leader = None;
        });
    }

    fn update(&self, f: impl FnOnce(&mut DaemonStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
            let line = s.summary.clone();
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(&line)]);
        }
    }

    /// Set the phase. Resources whose refresh timed out keep an otherwise converged daemon
    /// `degraded`: it planned them from state and cannot say they are in sync.
    fn phase(&self, phase: &str, summary: String) {
        let phase = phase.to_owned();
        self.update(move |s| {
            if phase == "in sync" && !s.stuck.is_empty() {
                s.phase = "degraded".into();
                s.summary = format!(
                    "degraded: no answer to the refresh of {} (planned from state); {summary}",
                    s.stuck.join(", ")
                );
            } else {
                s.phase = phase;
                s.summary = summary;
            }
        });
    }

    fn frozen(&self, summary: String, errors: Vec<String>) {
        self.update(move |s| {
            s.phase = "frozen".into();
            s.summary = summary;
            s.load_errors = errors;
            s.last_reload_at = Some(now_ms());
        });
    }

    /// Load and plan. Errors are logged and shown in the status; `Ok(None)` when
    /// `skip_unchanged` and the files hash as the last good load did.
    async fn prepare(
        &mut self,
        reason: Reason,
        skip_unchanged: bool,
    ) -> Result<Option<Prepared>, String> {
        let why = reason.as_str();
        tracing::info!(reason = why, "reloading");
        let loaded = match &self.repo {
            None => manifest::load_with(&self.opts.manifests, &self.opts.load),
            Some(repo) => {
                let repo = repo.clone();
                match tokio::task::spawn_blocking(move || repo.read_head()).await {
                    Ok(Ok((rev, files))) => {
                        self.revision = Some(rev);
                        manifest::load_files_with(&self.opts.manifests, files, &self.opts.load)
                    }
                    Ok(Err(e)) => {
                        let msg = format!("{e:#}");
                        tracing::error!(reason = why, error = %msg, "cannot read the manifests at HEAD; acting on nothing");
                        self.frozen(format!("frozen: {msg}"), vec![msg.clone()]);
                        return Err(msg);
                    }
                    Err(e) => return Err(e.to_string()),
                }
            }
        };
        let set = match loaded {
            Ok(set) => set,
            Err(errors) => {
                self.last_good = None;
                tracing::error!(
                    reason = why,
                    errors = errors.0.len(),
                    "manifests failed to load; keeping the last good state and acting on nothing\n{errors}"
                );
                let rendered = errors.0.iter().map(|d| d.render()).collect();
                self.frozen(
                    format!("frozen: {} manifest errors", errors.0.len()),
                    rendered,
                );
                return Err(errors.to_string());
            }
        };
        let graph = match Graph::build(&set) {
            Ok(g) => g,
            Err(diags) => {
                self.last_good = None;
                self.metrics.reload_failed();
                let e = manifest::LoadErrors(diags);
                tracing::error!(
                    reason = why,
                    "manifests failed to load; keeping the last good state and acting on nothing\n{e}"
                );
                self.frozen("frozen: dependency cycle".into(), vec![e.to_string()]);
                return Err(e.to_string());
            }
        };
        if skip_unchanged && self.last_good.as_deref() == Some(set.digest.as_str()) {
            tracing::debug!("manifests unchanged after rescan");
            return Ok(None);
        }
        let digest = set.digest.clone();
        let revision = self.revision.clone();
        self.metrics.reloaded(now_ms());
        self.update(|s| {
            s.revision = revision;
            s.load_errors.clear();
            s.manifests_digest = Some(digest);
            s.last_reload_at = Some(now_ms());
            s.last_good_reload_at = s.last_reload_at;
        });
        let opts = PlanOptions {
            refresh: true,
            // A file event refreshes what changed and what depends on it; drift elsewhere
            // waits for the resync (or SIGHUP, or an operator's plan or apply).
            changed_only: matches!(
                reason,
                Reason::ManifestsChanged | Reason::ChangedDuringApply | Reason::Retry
            ),
            targets: Vec::new(),
            parallelism: self.opts.parallelism,
            refresh_timeout: self.opts.refresh_timeout,
        };
        // Refreshing only reads, so a shutdown abandons it rather than wait for every
        // observation (a server that hangs could hold SIGTERM for minutes).
        let mut shutdown = self.shutdown.clone();
        let mut demoted = self.demoted.clone();
        let planned = tokio::select! {
            planned = plan(&set, &graph, &self.store, &self.providers, &opts) => planned,
            Ok(_) = shutdown.wait_for(|stop| *stop) => {
                tracing::info!(reason = why, "shutting down: refresh abandoned");
                return Err("shutting down".into());
            }
            Ok(_) = demoted.wait_for(|lost| *lost) => {
                tracing::warn!(reason = why, "lost the lead: refresh abandoned");
                return Err("no longer the leader".into());
            }
        };
        match planned {
            Ok(plan) => {
                self.metrics
                    .drift_found(plan.changes.iter().filter(|c| !c.drift.is_empty()).count());
                for w in &plan.warnings {
                    tracing::warn!("{w}");
                }
                let stuck: Vec<String> = plan.timed_out.iter().map(ToString::to_string).collect();
                let drifted: Vec<String> = plan
                    .changes
                    .iter()
                    .filter(|c| !c.drift.is_empty())
                    .map(|c| c.address.to_string())
                    .collect();
                let nodes: Vec<(String, Vec<String>)> = graph
                    .order()
                    .iter()
                    .map(|a| {
                        let deps = graph.dependencies(a);
                        (
                            a.to_string(),
                            deps.iter().map(ToString::to_string).collect(),
                        )
                    })
                    .collect();
                self.update(|s| {
                    s.stuck = stuck;
                    s.drifted = drifted;
                    s.graph = nodes;
                });
                Ok(Some(Prepared { set, graph, plan }))
            }
            Err(e) => {
                let msg = format!("{e:#}");
                tracing::error!(reason = why, error = %msg, "planning failed");
                self.phase("degraded", format!("planning failed: {msg}"));
                self.schedule_retry();
                Err(msg)
            }
        }
    }

    /// A reload from a trigger, then the failed resources and their retries reported.
    async fn reconcile(&mut self, why: Reason, rx: &mut mpsc::UnboundedReceiver<Event>) -> Flow {
        // A retry that came due is used up by this reload, whatever triggered it.
        if self
            .retry_at
            .is_some_and(|at| at <= tokio::time::Instant::now())
        {
            self.retry_at = None;
        }
        let flow = self.reconcile_once(why, rx).await;
        self.report_failed().await;
        flow
    }

    /// Plan, hold back what needs approval and what failed permanently, apply the rest.
    async fn reconcile_once(
        &mut self,
        reason: Reason,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> Flow {
        // A rescan that finds the same files as the last good load changes nothing.
        let unchanged_is_noop = reason == Reason::ManifestsChanged;
        let Ok(Some(mut p)) = self.prepare(reason, unchanged_is_noop).await else {
            return Flow::Continue;
        };
        let why = reason.as_str();
        self.last_good = Some(p.set.digest.clone());
        let (orphans, held) = hold_back_deletes(&mut p.plan, self.opts.prune, self.opts.max_prune);
        self.update(|s| {
            s.orphans = orphans.iter().map(ToString::to_string).collect();
            s.held = held.iter().map(ToString::to_string).collect();
        });
        if !p.plan.errors.is_empty() {
            for e in &p.plan.errors {
                tracing::error!("{e}");
            }
            self.phase("degraded", "error: the plan cannot be applied".into());
            return Flow::Continue;
        }
        if !reason.by_operator() {
            let parked = self.park_permanent(&mut p).await;
            if !parked.is_empty() {
                tracing::info!(
                    reason = why,
                    held = ?parked.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "not retrying what failed permanently, nor what depends on it"
                );
            }
        }
        let summary = p.plan.summary().line();
        if self.stalled.is_some() && self.stalled == self.last_good && reason != Reason::Sighup {
            tracing::warn!(
                reason = why,
                "{summary} Stalled after repeated failures: not applying until the manifests change"
            );
            return Flow::Continue;
        }
        self.stalled = None;
        if !p.plan.has_changes() {
            tracing::info!(reason = why, "no changes");
            self.phase(
                "in sync",
                format!("in sync ({} resources)", p.set.managed().count()),
            );
            self.failures = 0;
            self.retry_at = None;
            return Flow::Continue;
        }
        if self.opts.approve == Approve::Manual {
            tracing::info!(
                reason = why,
                "{summary} Waiting for approval (--approve manual)"
            );
            self.phase(
                "waiting for approval",
                format!("waiting for approval: {summary}"),
            );
            return Flow::Continue;
        }
        tracing::info!(reason = why, "{summary}");
        let (flow, _) = self.execute(p, rx, None).await;
        flow
    }

    /// Plan for `tend plan` through the socket: the full plan, nothing held back, nothing done.
    async fn plan_for_client(&mut self) -> Result<Plan, String> {
        let p = self
            .prepare(Reason::TendPlan, false)
            .await?
            .ok_or("nothing to plan")?;
        Ok(p.plan)
    }

    /// `tend apply` through the socket: the operator's approval, so held deletes and
    /// `--approve manual` plans go ahead.
    async fn apply_for_client(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Event>,
    ) -> (Flow, Result<ApplyReply, String>) {
        let p = match self.prepare(Reason::TendApply, false).await {
            Ok(Some(p)) => p,
            Ok(None) => return (Flow::Continue, Err("nothing to apply".into())),
            Err(e) => return (Flow::Continue, Err(e)),
        };
        self.last_good = Some(p.set.digest.clone());
        let echo = Arc::new(Echo::default());
        if !p.plan.errors.is_empty() || !p.plan.has_changes() {
            return (Flow::Continue, Ok(echo.reply(p.plan)));
        }
        let plan = p.plan.clone();
        let (flow, _) = self.execute(p, rx, Some(Arc::clone(&echo))).await;
        self.report_failed().await;
        (flow, Ok(echo.reply(plan)))
    }

    /// Apply a prepared plan. Shutdown during the apply waits up to the grace period, then
    /// cancels. Returns the flow and the run's exit code.
    async fn execute(
        &mut self,
        p: Prepared,
        rx: &mut mpsc::UnboundedReceiver<Event>,
        echo: Option<Arc<Echo>>,
    ) -> (Flow, u8) {
        self.phase("applying", format!("applying: {}", p.plan.summary().line()));
        let sink = echo.clone();
        let status = Arc::clone(&self.status);
        let apply_opts = ApplyOptions {
            parallelism: self.opts.parallelism,
            trigger: Trigger::Daemon,
            progress: Arc::new(move |line| {
                tracing::info!("{line}");
                note_activity(&status, &line);
                if let Some(e) = &sink {
                    e.line(&line);
                }
            }),
            heartbeat: Duration::from_secs(10),
            revision: self.revision.clone(),
        };
        let (store, providers) = (Arc::clone(&self.store), self.providers.clone());
        let run = apply(&p.set, &p.graph, &p.plan, &store, &providers, apply_opts);
        tokio::pin!(run);
        let mut deferred = Vec::new();
        let result = loop {
            tokio::select! {
                r = &mut run => break r,
                e = rx.recv() => match e {
                    None | Some(Event::Shutdown) => {
                        tracing::info!(grace = ?self.opts.grace, "shutting down: letting the running apply finish");
                        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                        match tokio::time::timeout(self.opts.grace, &mut run).await {
                            Ok(r) => {
                                if let (Some(e), Ok(run)) = (&echo, &r) {
                                    e.run(run);
                                }
                                self.log_run(r);
                            }
                            Err(_) => tracing::warn!("grace period over: cancelling the running apply (its resources stay `applying` and are refreshed at the next start)"),
                        }
                        return (Flow::Stop, 1);
                    }
                    Some(Event::Demoted) => {
                        // Another daemon may be acting already: nothing more is started, and
                        // what runs is abandoned as SIGTERM's grace period ending does (its
                        // records stay `applying`; the new leader refreshes them first).
                        tracing::warn!("lost the lead: abandoning the running apply");
                        self.update(|s| s.activity.clear());
                        for c in deferred {
                            refuse_as_standby(c, "this daemon lost the lead during the apply");
                        }
                        return (Flow::Demoted, 1);
                    }
                    // Clients asking during an apply are answered after it; other triggers
                    // run one reconcile right after it.
                    Some(Event::Control(c)) => deferred.push(c),
                    Some(Event::Reload) => self.pending = Some(Reason::Sighup),
                    Some(Event::ManifestsChanged) => {
                        if self.pending != Some(Reason::Sighup) {
                            self.pending = Some(Reason::ChangedDuringApply);
                        }
                    }
                    Some(Event::Resync | Event::RetryDue) => {
                        self.pending.get_or_insert(Reason::Resync);
                    }
                },
            }
        };
        if let (Some(e), Ok(run)) = (&echo, &result) {
            e.run(run);
        }
        let code = self.log_run(result);
        for c in deferred {
            match c {
                Control::Plan(reply) => {
                    let _ = reply.send(self.plan_for_client().await);
                }
                Control::Apply(reply) => {
                    let _ = reply.send(Err(
                        "another apply was running; run `tend apply` again".into()
                    ));
                }
            }
        }
        (Flow::Continue, code)
    }

    fn log_run(&mut self, r: anyhow::Result<crate::state::Run>) -> u8 {
        // Whatever ended the run, nothing of it is running any more.
        self.update(|s| s.activity.clear());
        if let Ok(run) = &r {
            let seconds = run.ended_at.saturating_sub(run.started_at) as f64 / 1000.0;
            self.metrics.run_finished(run, seconds);
            // What the run applied no longer drifts.
            self.update(|s| {
                s.drifted.retain(|a| {
                    !run.results
                        .iter()
                        .any(|x| &x.address == a && x.outcome == RunOutcome::Applied)
                });
            });
        }
        match r {
            Ok(run) if run.exit_code == 0 => {
                tracing::info!(run = %run.id, "apply complete");
                self.phase("in sync", format!("in sync (run {})", run.id));
                self.update(|s| s.last_run = Some(run.id.clone()));
                self.failures = 0;
                self.retry_at = None;
                self.update(|s| s.failures = 0);
                0
            }
            Ok(run) => {
                let failed: Vec<String> = run
                    .results
                    .iter()
                    .filter(|r| !r.outcome.ok())
                    .map(|r| format!("{} ({})", r.address, r.detail.clone().unwrap_or_default()))
                    .collect();
                // The error class decides what happens next: transient failures (and
                // conflicts that outlived the executor's one retry) back off and retry;
                // permanent ones wait for a change to their inputs or an operator.
                let retryable = run.results.iter().any(|r| {
                    r.outcome == RunOutcome::Failed && r.error_class != Some(ErrorClass::Permanent)
                });
                tracing::error!(run = %run.id, failed = ?failed, "apply finished with failures");
                self.phase(
                    "degraded",
                    format!(
                        "degraded: {} resources failed (run {})",
                        failed.len(),
                        run.id
                    ),
                );
                self.update(|s| s.last_run = Some(run.id.clone()));
                if retryable {
                    self.schedule_retry();
                } else {
                    tracing::warn!(
                        run = %run.id,
                        "failed permanently: not retried until the resources' manifests, credentials or dependencies change (or `tend apply` / SIGHUP)"
                    );
                    self.failures = 0;
                    self.retry_at = None;
                    self.update(|s| s.failures = 0);
                }
                1
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "apply failed");
                self.phase("degraded", format!("apply failed: {e:#}"));
                self.schedule_retry();
                1
            }
        }
    }

    /// Take out of the plan the resources whose last attempt failed permanently when nothing
    /// they depend on changed since (same resolved spec and connection, no dependency being
    /// changed by this plan), and what depends on them: retrying would fail the same way.
    /// Returns what was taken out.
    async fn park_permanent(&self, p: &mut Prepared) -> Vec<Address> {
        let changed: BTreeSet<Address> = p
            .plan
            .changes
            .iter()
            .filter(|c| {
                matches!(
                    c.action,
                    Action::Create | Action::Update | Action::Replace | Action::Adopt
                )
            })
            .map(|c| c.address.clone())
            .collect();
        if changed.is_empty() {
            return Vec::new();
        }
        let candidates = changed.clone();
        let failed = blocking(&self.store, move |s| {
            let mut out = Vec::new();
            for sealed in s.list_sealed()? {
                if sealed.status == Status::Failed && candidates.contains(&sealed.address) {
                    let r = s.unseal(&sealed)?;
                    if r.error_class == Some(ErrorClass::Permanent) {
                        out.push(r);
                    }
                }
            }
            Ok(out)
        })
        .await;
        let failed: Vec<Record> = match failed {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read failed resources: retrying them all");
                return Vec::new();
            }
        };
        // A dependency this plan changes may change what the resource gets: retry it.
        let failed: Vec<(Record, BTreeSet<Address>)> = failed
            .into_iter()
            .map(|r| {
                let ancestors = p.graph.ancestors(&r.address);
                (r, ancestors)
            })
            .filter(|(_, ancestors)| ancestors.is_disjoint(&changed))
            .collect();
        if failed.is_empty() {
            return Vec::new();
        }
        // Resolve them as the executor would, with the outputs their dependencies have now.
        let wanted: BTreeSet<Address> = failed.iter().flat_map(|(_, a)| a.clone()).collect();
        let outputs = blocking(&self.store, move |s| {
            let mut m = BTreeMap::new();
            for a in wanted {
                if let Some(r) = s.get(&a)?
                    && r.status == Status::Ready
                {
                    m.insert(a, r.outputs);
                }
            }
            Ok(m)
        })
        .await
        .unwrap_or_default();
        let lookup = |t: &Address| outputs.get(t).cloned();
        let key = self.store.digest_key().to_vec();
        let mut resolver = Resolver::new(&p.set);
        let mut parked = Vec::new();
        for (r, _) in failed {
            let same = resolver.desired(&r.address, &lookup).is_some_and(|d| {
                r.failed_inputs.as_deref() == Some(inputs_digest(&d, &key).as_str())
            });
            if same {
                tracing::warn!(
                    resource = %r.address,
                    error = r.last_error.as_deref().unwrap_or(""),
                    "failed permanently and nothing it depends on changed: not retrying it (`tend apply` or SIGHUP does)"
                );
                parked.push(r.address);
            }
        }
        // What depends on a parked resource would only be blocked by it.
        let mut held: BTreeSet<Address> = parked.iter().cloned().collect();
        let mut queue = parked;
        while let Some(a) = queue.pop() {
            for d in p.graph.dependents(&a) {
                if held.insert(d.clone()) {
                    queue.push(d);
                }
            }
        }
        let held: Vec<Address> = held.into_iter().filter(|a| changed.contains(a)).collect();
        p.plan.drop_changes(&held);
        held
    }

    /// Publish the failed resources (status, metrics) with their class and next retry, and
    /// call the daemon degraded while any remain.
    async fn report_failed(&mut self) {
        let records = blocking(&self.store, |s| {
            let mut out = Vec::new();
            for sealed in s.list_sealed()? {
                if sealed.status == Status::Failed {
                    out.push(s.unseal(&sealed)?);
                }
            }
            Ok(out)
        })
        .await;
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read failed resources");
                return;
            }
        };
        let next_retry_at = self.retry_at.map(|at| {
            let left = at.saturating_duration_since(tokio::time::Instant::now());
            now_ms().saturating_add(u64::try_from(left.as_millis()).unwrap_or(u64::MAX))
        });
        let failed: Vec<FailedResource> = records
            .into_iter()
            .map(|r| FailedResource {
                address: r.address.to_string(),
                error: r.last_error.unwrap_or_default(),
                next_retry_at: match r.error_class {
                    Some(ErrorClass::Permanent) => None,
                    _ => next_retry_at,
                },
                error_class: r.error_class,
            })
            .collect();
        self.metrics.failed(&failed, next_retry_at);
        self.update(|s| {
            s.next_retry_at = next_retry_at;
            if s.phase == "in sync" && !failed.is_empty() {
                let permanent = failed
                    .iter()
                    .filter(|f| f.error_class == Some(ErrorClass::Permanent))
                    .count();
                s.phase = "degraded".into();
                s.summary = format!(
                    "degraded: {} resources failed, {permanent} permanently (not retried until their inputs change, or `tend apply` / SIGHUP)",
                    failed.len()
                );
            }
            s.failed = failed;
        });
    }

    /// Capped exponential backoff with jitter: `retry_base` (5 s), doubling, at most 5 min;
    /// after `stall_after` failed attempts in a row, stop until the manifests change (or an
    /// operator runs `tend apply` / sends SIGHUP).
    fn schedule_retry(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let failures = self.failures;
        self.update(|s| s.failures = failures);
        if self.failures >= self.opts.stall_after {
            tracing::error!(
                attempts = self.failures,
                "stalled: not retrying until the manifests change (or `tend apply` / SIGHUP)"
            );
            self.stalled = self.last_good.clone();
            self.retry_at = None;
            let n = self.failures;
            self.update(|s| {
                s.phase = "stalled".into();
                s.summary = format!(
                    "stalled after {n} failed attempts: fix the manifests, or run `tend apply`"
                );
                s.next_retry_at = None;
            });
            return;
        }
        let base = self
            .opts
            .retry_base
            .saturating_mul(1 << self.failures.min(7).saturating_sub(1));
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
        let at = now_ms() + u64::try_from(delay.as_millis()).unwrap_or(0);
        self.update(|s| s.next_retry_at = Some(at));
    }
}

/// Take out of a plan what the daemon may not destroy on its own: orphans without `--prune`,
/// and every delete when there are more than `--max-prune`. Returns (orphans, held).
fn hold_back_deletes(
    plan: &mut Plan,
    prune: bool,
    max_prune: usize,
) -> (Vec<Address>, Vec<Address>) {
    let deletes: Vec<Address> = plan
        .changes
        .iter()
        .filter(|c| c.action == Action::Delete)
        .map(|c| c.address.clone())
        .collect();
    if deletes.is_empty() || (prune && deletes.len() <= max_prune) {
        return (Vec::new(), Vec::new());
    }
    plan.drop_changes(&deletes);
    if !prune {
        tracing::warn!(orphans = ?deletes.iter().map(ToString::to_string).collect::<Vec<_>>(), "resources whose manifests were removed are orphaned (run with --prune to destroy them)");
        (deletes, Vec::new())
    } else {
        tracing::warn!(
            count = deletes.len(),
            max_prune,
            "this reload would destroy more than --max-prune resources: holding the deletes until approved with `tend apply`"
        );
        (Vec::new(), deletes)
    }
}

#[cfg(test)]
mod tests {
    //! The loop's retry policy, driven through `Daemon::reconcile` with a fake provider that
    //! counts its calls, over a real (temporary) state store and manifests directory.

    use async_trait::async_trait;

    use super::*;
    use crate::provider::{Applied, Desired, Journal, Observed, ProviderError};
    use crate::state::SledStore;
    use crate::value::Value;

    /// Fails applies by the database's owner: `permanent…` with a Permanent error,
    /// `transient…` with a Transient one; anything else succeeds. Counts applies per address.
    #[derive(Default)]
    struct Counting {
        applies: Mutex<BTreeMap<String, usize>>,
    }

    impl Counting {
        fn applies(&self, name: &str) -> usize {
            self.applies
                .lock()
                .map(|m| m.get(&format!("PostgresDatabase.{name}")).copied())
                .ok()
                .flatten()
                .unwrap_or(0)
        }
    }

    #[async_trait]
    impl Provider for Counting {
        fn name(&self) -> &'static str {
            "postgres"
        }
        async fn observe(
            &self,
            d: &Desired,
            recorded: Option<&Record>,
        ) -> Result<Option<Observed>, ProviderError> {
            // What was applied is there, unchanged.
            match recorded {
                Some(_) => {
                    crate::provider::postgres::model::PostgresDatabase::converged(d).map(Some)
                }
                None => Ok(None),
            }
        }
        async fn apply(
            &self,
            _: &dyn Journal,
            d: &Desired,
            _: Option<&Record>,
        ) -> Result<Applied, ProviderError> {
            if let Ok(mut m) = self.applies.lock() {
                *m.entry(d.address.to_string()).or_insert(0) += 1;
            }
            let owner = d.spec.get("owner").and_then(Value::as_str).unwrap_or("");
            if owner.starts_with("permanent") {
                return Err(ProviderError::permanent("role name is reserved"));
            }
            if owner.starts_with("transient") {
                return Err(ProviderError::transient("server is starting up"));
            }
            let mut applied = Applied::default();
            applied
                .outputs
                .insert("username".into(), Value::Str(owner.to_owned()));
            Ok(applied)
        }
        async fn destroy(&self, _: &Record) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    const SERVER: &str = "apiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {host: h, user: u}\n";

    fn db(name: &str, owner: &str) -> String {
        format!(
            "apiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: {name}}}\nspec: {{server: main, owner: \"{owner}\"}}\n"
        )
    }

    struct Harness {
        d: Daemon,
        rx: mpsc::UnboundedReceiver<Event>,
        provider: Arc<Counting>,
        dir: tempfile::TempDir,
        _shutdown: flag::Sender<bool>,
        _events: mpsc::UnboundedSender<Event>,
    }

    impl Harness {
        fn new(files: &[(&str, String)]) -> Harness {
            let dir = tempfile::tempdir().expect("tempdir");
            let manifests = dir.path().join("manifests");
            std::fs::create_dir_all(&manifests).expect("manifests dir");
            std::fs::write(manifests.join("server.yaml"), SERVER).expect("write");
            let h = |dir: tempfile::TempDir| {
                let store: Arc<dyn StateStore> =
                    Arc::new(SledStore::open(&dir.path().join("state")).expect("store"));
                let provider = Arc::new(Counting::default());
                let providers: Vec<Arc<dyn Provider>> = vec![Arc::clone(&provider) as _];
                let (events, rx) = mpsc::unbounded_channel();
                let (shutdown_tx, shutdown) = flag::channel(false);
                let d = Daemon {
                    opts: Options {
                        manifests: dir.path().join("manifests"),
                        load: manifest::LoadOptions::default(),
                        resync: Duration::from_secs(3600),
                        prune: false,
                        max_prune: 3,
                        approve: Approve::Auto,
                        parallelism: 4,
                        debounce: Duration::from_millis(10),
                        grace: Duration::from_secs(1),
                        socket: dir.path().join("tend.sock"),
                        metrics_addr: None,
                        ui_addr: None,
                        ui_token: None,
                        source: Source::Files,
                        retry_base: Duration::from_millis(20),
                        stall_after: 100,
                        refresh_timeout: None,
                    },
                    store,
                    providers,
                    last_good: None,
                    failures: 0,
                    retry_at: None,
                    status: Arc::new(Mutex::new(DaemonStatus::default())),
                    pending: None,
                    metrics: Arc::new(metrics::Metrics::default()),
                    repo: None,
                    revision: None,
                    stalled: None,
                    shutdown,
                    demoted: flag::channel(false).1,
                    tx: events.clone(),
                };
                Harness {
                    d,
                    rx,
                    provider,
                    dir,
                    _shutdown: shutdown_tx,
                    _events: events,
                }
            };
            let harness = h(dir);
            for (name, body) in files {
                harness.write(name, body);
            }
            harness
        }

        fn write(&self, name: &str, body: &str) {
            std::fs::write(self.dir.path().join("manifests").join(name), body).expect("write");
        }

        async fn reconcile(&mut self, why: Reason) {
            assert_eq!(self.d.reconcile(why, &mut self.rx).await, Flow::Continue);
        }

        async fn record(&self, name: &str) -> Record {
            let a: Address = format!("PostgresDatabase.{name}").parse().expect("address");
            blocking(&self.d.store, move |s| s.get(&a))
                .await
                .expect("state")
                .expect("recorded")
        }

        fn status(&self) -> DaemonStatus {
            self.d.status.lock().expect("status").clone()
        }

        /// Wait for the retry timer as the loop does; false if none is set.
        async fn retry_timer(&self) -> bool {
            match self.d.retry_at {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    true
                }
                None => false,
            }
        }
    }

    #[tokio::test]
    async fn a_permanent_failure_is_not_retried_on_the_retry_timer_while_a_transient_one_is() {
        let mut h = Harness::new(&[
            ("bad.yaml", db("bad", "permanent")),
            ("flaky.yaml", db("flaky", "transient")),
            ("ok.yaml", db("ok", "fine")),
        ]);
        h.reconcile(Reason::Startup).await;
        assert_eq!(
            (
                h.provider.applies("bad"),
                h.provider.applies("flaky"),
                h.provider.applies("ok")
            ),
            (1, 1, 1)
        );
        for attempt in 2..=4 {
            assert!(h.retry_timer().await, "the transient failure set a retry");
            h.reconcile(Reason::Retry).await;
            assert_eq!(h.provider.applies("flaky"), attempt, "transient: retried");
            assert_eq!(h.provider.applies("bad"), 1, "permanent: not retried");
        }
        h.reconcile(Reason::Resync).await;
        assert_eq!(h.provider.applies("bad"), 1, "nor on a resync");
        assert_eq!(h.provider.applies("ok"), 1);

        // The class is recorded, and the status tells the two apart.
        let bad = h.record("bad").await;
        assert_eq!(bad.status, Status::Failed);
        assert_eq!(bad.error_class, Some(ErrorClass::Permanent));
        assert_eq!(bad.last_error.as_deref(), Some("role name is reserved"));
        let status = h.status();
        assert_eq!(status.phase, "degraded");
        let entry = |name: &str| {
            status
                .failed
                .iter()
                .find(|f| f.address == format!("PostgresDatabase.{name}"))
                .cloned()
                .expect("listed as failed")
        };
        assert_eq!(entry("bad").error_class, Some(ErrorClass::Permanent));
        assert_eq!(entry("bad").next_retry_at, None);
        assert_eq!(entry("flaky").error_class, Some(ErrorClass::Transient));
        assert!(entry("flaky").next_retry_at.is_some());
        assert_eq!(status.next_retry_at, entry("flaky").next_retry_at);
    }

    #[tokio::test]
    async fn transient_failures_back_off_and_stall_after_stall_after_runs() {
        let mut h = Harness::new(&[("flaky.yaml", db("flaky", "transient"))]);
        h.d.opts.stall_after = 3;
        h.reconcile(Reason::Startup).await;
        let first = h.d.retry_at.expect("a retry");
        assert!(h.retry_timer().await);
        h.reconcile(Reason::Retry).await;
        let second = h.d.retry_at.expect("a retry");
        // 20 ms, then 40 ms (each plus up to a fifth of jitter), from the end of each run.
        assert!(
            second - first >= Duration::from_millis(40),
            "{:?}",
            second - first
        );
        assert!(h.retry_timer().await);
        h.reconcile(Reason::Retry).await;
        assert_eq!(h.provider.applies("flaky"), 3);
        assert_eq!(h.d.retry_at, None, "stalled");
        assert_eq!(h.status().phase, "stalled");
        h.reconcile(Reason::Resync).await;
        assert_eq!(h.provider.applies("flaky"), 3, "not while stalled");
        h.reconcile(Reason::Sighup).await;
        assert_eq!(h.provider.applies("flaky"), 4, "SIGHUP un-stalls");
    }

    #[tokio::test]
    async fn a_permanent_failure_is_retried_when_a_dependency_or_its_connection_changes() {
        let mut h = Harness::new(&[
            ("parent.yaml", db("parent", "alice")),
            (
                "bad.yaml",
                db(
                    "bad",
                    "permanent-${PostgresDatabase.parent.status.outputs.username}",
                ),
            ),
        ]);
        h.reconcile(Reason::Startup).await;
        assert_eq!(
            (h.provider.applies("parent"), h.provider.applies("bad")),
            (1, 1)
        );

        // The dependency changes (and with it the output `bad` reads).
        h.write("parent.yaml", &db("parent", "bob"));
        h.reconcile(Reason::ManifestsChanged).await;
        assert_eq!(
            (h.provider.applies("parent"), h.provider.applies("bad")),
            (2, 2)
        );
        h.reconcile(Reason::Resync).await;
        assert_eq!(h.provider.applies("bad"), 2, "nothing changed since");

        // The server's connection (where a credential lands) changes.
        h.write(
            "server.yaml",
            &SERVER.replace("{host: h, user: u}", "{host: h2, user: u}"),
        );
        h.reconcile(Reason::ManifestsChanged).await;
        assert_eq!(h.provider.applies("bad"), 3, "its connection changed");
        assert_eq!(h.provider.applies("parent"), 2);
    }

    #[tokio::test]
    async fn only_permanent_failures_set_no_retry_timer() {
        let mut h = Harness::new(&[("bad.yaml", db("bad", "permanent"))]);
        h.reconcile(Reason::Startup).await;
        assert_eq!(h.provider.applies("bad"), 1);
        assert!(!h.retry_timer().await, "no retry scheduled");
        assert_eq!(h.status().next_retry_at, None);
        assert_eq!(h.status().phase, "degraded");
    }

    #[tokio::test]
    async fn a_permanent_failure_is_retried_when_its_manifest_changes_or_an_operator_asks() {
        let mut h = Harness::new(&[
            ("bad.yaml", db("bad", "permanent")),
            ("ok.yaml", db("ok", "fine")),
        ]);
        h.reconcile(Reason::Startup).await;
        assert_eq!(h.provider.applies("bad"), 1);

        // Another resource's manifest changes: not this one's inputs.
        h.write("ok.yaml", &db("ok", "fine-too"));
        h.reconcile(Reason::ManifestsChanged).await;
        assert_eq!(h.provider.applies("ok"), 2);
        assert_eq!(h.provider.applies("bad"), 1, "its inputs did not change");

        // Its own manifest changes (still wrong): retried once.
        h.write("bad.yaml", &db("bad", "permanent-still"));
        h.reconcile(Reason::ManifestsChanged).await;
        assert_eq!(
            h.provider.applies("bad"),
            2,
            "a changed manifest retries it"
        );
        h.reconcile(Reason::Retry).await;
        h.reconcile(Reason::Resync).await;
        assert_eq!(h.provider.applies("bad"), 2, "and then waits again");

        // SIGHUP and `tend apply` are an operator's say-so.
        h.reconcile(Reason::Sighup).await;
        assert_eq!(h.provider.applies("bad"), 3, "SIGHUP retries it");
        let (flow, reply) = h.d.apply_for_client(&mut h.rx).await;
        assert_eq!(flow, Flow::Continue);
        assert_eq!(reply.map(|r| r.run.map(|run| run.exit_code)), Ok(Some(1)));
        assert_eq!(h.provider.applies("bad"), 4, "`tend apply` retries it");

        // Fixed: converges, and the failure is gone from the status.
        h.write("bad.yaml", &db("bad", "fixed"));
        h.reconcile(Reason::ManifestsChanged).await;
        assert_eq!(h.provider.applies("bad"), 5);
        let bad = h.record("bad").await;
        assert_eq!((bad.status, bad.error_class), (Status::Ready, None));
        assert!(h.status().failed.is_empty());
        assert_eq!(h.status().phase, "in sync");
    }
}
