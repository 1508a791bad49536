//! The executor: runs a plan's actions in graph order with bounded parallelism (global and per
//! outside system), a timeout per action, and state transitions around each action:
//! `applying` before it starts, `ready` only after the provider confirmed, `failed` with the
//! error otherwise. A failed resource blocks its dependents; everything else goes on.
//! Every run is recorded. Providers reach state only through [`StoreJournal`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::sync::{Semaphore, watch};

use crate::address::Address;
use crate::desired::Resolver;
use crate::engine::blocking;
use crate::graph::Graph;
use crate::manifest::ManifestSet;
use crate::plan::{Action, Plan};
use crate::provider::{self, Desired, ErrorClass, Journal, Provider, ProviderError};
use crate::state::{
    Record, ResourceResult, Run, RunOutcome, StateError, StateStore, Status, Trigger,
};
use crate::value::Value;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// How to apply.
#[derive(Clone)]
pub struct ApplyOptions {
    pub parallelism: usize,
    pub trigger: Trigger,
    /// Progress lines ("X: Creating...", "X: Creation complete after 1s").
    pub progress: Arc<dyn Fn(String) + Send + Sync>,
    /// How often a long action reports that it is still running.
    pub heartbeat: Duration,
    pub revision: Option<String>,
}

/// How one resource ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    Unchanged,
    Failed(String, ErrorClass),
    Blocked(Address),
}

/// A digest of everything an action on `desired` depends on: its resolved spec (which holds
/// the outputs of what it refs) and its connection (server, credential). A failed resource
/// records it, so the daemon can tell whether anything changed since the failure.
pub fn inputs_digest(desired: &Desired, key: &[u8]) -> String {
    format!(
        "{}:{}",
        desired.spec.digest(key),
        desired.connection.digest(key)
    )
}

impl Outcome {
    fn ok(&self) -> bool {
        matches!(self, Outcome::Applied | Outcome::Unchanged)
    }
}

/// The executor's journal for one resource: persists provider data into its record, flushed,
/// before the provider goes on.
struct StoreJournal {
    store: Arc<dyn StateStore>,
    record: Mutex<Record>,
    /// What this action journaled (the record's private data before it began is not here).
    saved: Mutex<BTreeMap<String, Value>>,
}

impl StoreJournal {
    fn snapshot(&self) -> Record {
        self.record
            .lock()
            .map(|r| r.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
}

#[async_trait]
impl Journal for StoreJournal {
    async fn save_private(&self, private: BTreeMap<String, Value>) -> Result<(), ProviderError> {
        let rec = {
            let mut r = self
                .record
                .lock()
                .map_err(|_| ProviderError::permanent("state journal poisoned"))?;
            r.private.extend(private.clone());
            r.updated_at = now_ms();
            r.clone()
        };
        blocking(&self.store, move |s| s.put(&rec))
            .await
            .map_err(|e| ProviderError::permanent(format!("cannot persist to state: {e}")))?;
        self.saved
            .lock()
            .map_err(|_| ProviderError::permanent("state journal poisoned"))?
            .extend(private);
        Ok(())
    }

    fn journaled(&self, key: &str) -> Option<Value> {
        self.saved.lock().ok()?.get(key).cloned()
    }
}

/// Actions that may be ready (desired state resolved, `Provider::prepare` journaled, the
/// `applying` mark durable) beyond those running. Their flushes then overlap the running
/// actions' work and share group commits, instead of each waiting on the disk between two
/// actions: measured with `--parallelism 1` on 500 new databases, a PostgreSQL checkpoint's
/// writeback on the same disk made each flush wait 5–14 ms, which a look-ahead of 1 still
/// showed and one of 8 hid (`apply_vs_psql`). A crash leaves at most this many more records
/// `applying` with nothing sent; they are refreshed and converged by the next run.
const LOOKAHEAD: usize = 8;

/// Output lines of providers kept per run (the newest).
const OUTPUT_TAIL: usize = 500;

struct Shared<'a> {
    output: Arc<Mutex<std::collections::VecDeque<String>>>,
    set: &'a ManifestSet,
    store: Arc<dyn StateStore>,
    providers: Vec<Arc<dyn Provider>>,
    records: Mutex<BTreeMap<Address, Record>>,
    global: Semaphore,
    /// Actions between getting ready and done: the parallelism plus [`LOOKAHEAD`].
    ahead: Semaphore,
    per_system: Mutex<HashMap<String, Arc<Semaphore>>>,
    opts: ApplyOptions,
    key: Vec<u8>,
    /// Each action's last state write, under way (see the end of [`act`]).
    final_writes: Mutex<Vec<(Address, FinalWrite)>>,
}

/// An action's last state write, on a blocking thread.
type FinalWrite = tokio::task::JoinHandle<Result<(), StateError>>;

/// Apply a plan. Returns the run record (already stored).
pub async fn apply(
    set: &ManifestSet,
    graph: &Graph,
    plan: &Plan,
    store: &Arc<dyn StateStore>,
    providers: &[Arc<dyn Provider>],
    opts: ApplyOptions,
) -> anyhow::Result<Run> {
    let started = now_ms();
    // The records an apply reads: a delete must know every record (what depends on it per
    // state); creates and updates only their own and their dependencies' (for outputs), so an
    // apply of one new resource beside thousands decodes a handful, not all (issue 15 goal 2).
    let deletes = plan
        .changes
        .iter()
        .any(|c| matches!(c.action, Action::Delete | Action::Replace));
    let records: Vec<Record> = if deletes {
        blocking(store, |s| s.list()).await?
    } else {
        let mut wanted = BTreeSet::new();
        for c in plan.changes.iter().filter(|c| c.action != Action::NoOp) {
            wanted.insert(c.address.clone());
            wanted.extend(graph.ancestors(&c.address));
        }
        blocking(store, move |s| {
            let mut out = Vec::with_capacity(wanted.len());
            for a in &wanted {
                out.extend(s.get(a)?);
            }
            Ok(out)
        })
        .await?
    };
    let records: BTreeMap<Address, Record> = records
        .into_iter()
        .map(|r| (r.address.clone(), r))
        .collect();
    // What depends on what according to state, to order deletes.
    let mut recorded_dependents: BTreeMap<Address, Vec<Address>> = BTreeMap::new();
    for r in records.values() {
        for d in &r.depends_on {
            recorded_dependents
                .entry(d.clone())
                .or_default()
                .push(r.address.clone());
        }
    }
    let shared = Shared {
        output: Arc::new(Mutex::new(std::collections::VecDeque::new())),
        set,
        store: Arc::clone(store),
        providers: providers.to_vec(),
        records: Mutex::new(records),
        global: Semaphore::new(opts.parallelism.max(1)),
        ahead: Semaphore::new(opts.parallelism.max(1) + LOOKAHEAD),
        per_system: Mutex::new(HashMap::new()),
        key: store.digest_key().to_vec(),
        opts,
        final_writes: Mutex::new(Vec::new()),
    };
    let actions: BTreeMap<Address, Action> = plan
        .changes
        .iter()
        .filter(|c| c.action != Action::NoOp)
        .map(|c| (c.address.clone(), c.action))
        .collect();

    // One completion channel per action; a task waits on the channels of what it must follow.
    let mut senders = BTreeMap::new();
    let mut receivers = BTreeMap::new();
    for a in actions.keys() {
        let (tx, rx) = watch::channel(None::<Outcome>);
        senders.insert(a.clone(), tx);
        receivers.insert(a.clone(), rx);
    }
    let mut tasks = Vec::new();
    for (a, action) in &actions {
        let waits_for: Vec<Address> = if *action == Action::Delete {
            // Delete after everything recorded as depending on it is deleted or replaced.
            recorded_dependents
                .get(a)
                .into_iter()
                .flatten()
                .filter(|d| actions.contains_key(*d))
                .cloned()
                .collect()
        } else {
            let mut ancestors: Vec<Address> = graph
                .ancestors(a)
                .into_iter()
                .filter(|d| actions.contains_key(d))
                .collect();
            ancestors.sort();
            ancestors
        };
        let rxs: Vec<(Address, watch::Receiver<Option<Outcome>>)> = waits_for
            .into_iter()
            .filter_map(|d| receivers.get(&d).map(|r| (d, r.clone())))
            .collect();
        let tx = senders.remove(a);
        let shared = &shared;
        let (a, action) = (a.clone(), *action);
        tasks.push(async move {
            let start = Instant::now();
            let mut blocked = None;
            for (dep, mut rx) in rxs {
                let outcome = loop {
                    if let Some(o) = rx.borrow().clone() {
                        break o;
                    }
                    if rx.changed().await.is_err() {
                        break Outcome::Failed(
                            "internal: dependency task vanished".into(),
                            ErrorClass::Transient,
                        );
                    }
                };
                if !outcome.ok() && blocked.is_none() {
                    blocked = Some(match outcome {
                        Outcome::Blocked(root) => root,
                        _ => dep,
                    });
                }
            }
            let outcome = match blocked {
                Some(root) => {
                    (shared.opts.progress)(format!("{a}: Skipped (blocked by {root})"));
                    Outcome::Blocked(root)
                }
                None => run_one(shared, &a, action).await,
            };
            if let Some(tx) = tx {
                let _ = tx.send(Some(outcome.clone()));
            }
            (a, action, outcome, start.elapsed())
        });
    }
    let mut results = futures::future::join_all(tasks).await;
    // An action whose last state write failed is reported failed: state does not know what it
    // did beyond its `applying` record, and the next run converges it from there.
    let writes = std::mem::take(
        &mut *shared
            .final_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for (a, write) in writes {
        let failed = match write.await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("state task failed: {e}"),
        };
        if let Some(r) = results.iter_mut().find(|r| r.0 == a) {
            r.2 = Outcome::Failed(
                format!("applied, but its state could not be written: {failed}"),
                ErrorClass::Transient,
            );
        }
    }

    let mut run = Run {
        id: format!("{:013}-{:04x}", now_ms(), rand::random::<u16>()),
        trigger: shared.opts.trigger.clone(),
        summary: plan.summary().line(),
        results: Vec::new(),
        output_tail: Vec::new(),
        exit_code: 0,
        started_at: started,
        ended_at: 0,
        revision: shared.opts.revision.clone(),
    };
    if let Ok(tail) = shared.output.lock() {
        run.output_tail = tail.iter().cloned().collect();
    }
    for (a, action, outcome, elapsed) in results {
        let (result, detail, error_class) = match &outcome {
            Outcome::Applied => (RunOutcome::Applied, None, None),
            Outcome::Unchanged => (
                RunOutcome::Unchanged,
                Some("nothing to do once dependencies were known".to_owned()),
                None,
            ),
            Outcome::Failed(e, class) => (RunOutcome::Failed, Some(e.clone()), Some(*class)),
            Outcome::Blocked(root) => (
                RunOutcome::Blocked,
                Some(format!("blocked by {root}")),
                None,
            ),
        };
        if !outcome.ok() {
            run.exit_code = 1;
        }
        run.results.push(ResourceResult {
            address: a.to_string(),
            action,
            outcome: result,
            detail,
            error_class,
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        });
    }
    run.ended_at = now_ms();
    let stored = run.clone();
    blocking(store, move |s| {
        s.put_run(&stored)?;
        s.write_backup()
    })
    .await?;
    Ok(run)
}

fn words(action: Action) -> (&'static str, &'static str) {
    match action {
        Action::Create => ("Creating...", "Creation complete"),
        Action::Update => ("Modifying...", "Modifications complete"),
        Action::Replace => ("Replacing...", "Replacement complete"),
        Action::Delete => ("Destroying...", "Destruction complete"),
        Action::Adopt => ("Adopting...", "Adoption complete"),
        Action::NoOp => ("", ""),
    }
}

/// Where one progress line says its resource is, for a live summary (`tend apply` on a
/// terminal): the words [`words`] and [`run_one`] print, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Started,
    Done,
    /// Failed, or skipped because something it depends on failed.
    Failed,
}

/// The resource and [`Step`] a progress line reports; `None` for other lines (heartbeats, a
/// provider's own output).
pub fn progress_step(line: &str) -> Option<(&str, Step)> {
    let (address, rest) = line.split_once(": ")?;
    const ACTIONS: [Action; 5] = [
        Action::Create,
        Action::Update,
        Action::Replace,
        Action::Delete,
        Action::Adopt,
    ];
    let step = if ACTIONS.iter().any(|a| rest == words(*a).0) {
        Step::Started
    } else if rest.starts_with("No changes needed after ")
        || ACTIONS.iter().any(|a| {
            rest.strip_prefix(words(*a).1)
                .is_some_and(|r| r.starts_with(" after "))
        })
    {
        Step::Done
    } else if rest.starts_with("Failed after ") || rest.starts_with("Skipped (blocked by ") {
        Step::Failed
    } else {
        return None;
    };
    Some((address, step))
}

/// What an action does when its turn comes, with what it took before: the record, or (a
/// create, update or adoption) the action made ready ahead of its turn. A replace gets ready
/// only after its destroy.
enum Turn {
    Delete(Option<Record>),
    Replace(Option<Record>),
    Converge(Box<Result<Ready, ProviderError>>),
}

async fn run_one(shared: &Shared<'_>, a: &Address, action: Action) -> Outcome {
    let Some(p) = provider::for_kind(&shared.providers, a.kind) else {
        return Outcome::Failed(format!("no provider for {}", a.kind), ErrorClass::Permanent);
    };
    // A bounded look-ahead: up to LOOKAHEAD more actions than run at once get ready (and
    // their journal writes durable) while the running ones wait on their systems.
    let Ok(_ahead) = shared.ahead.acquire().await else {
        return Outcome::Failed("internal: executor closed".into(), ErrorClass::Transient);
    };
    let recorded = shared.records.lock().ok().and_then(|r| r.get(a).cloned());
    let turn = match action {
        Action::Delete => Turn::Delete(recorded),
        Action::Replace => Turn::Replace(recorded),
        _ => {
            let fresh = matches!(action, Action::Create | Action::Adopt);
            Turn::Converge(Box::new(
                ready(shared, p.as_ref(), a, recorded, fresh).await,
            ))
        }
    };
    let Ok(_global) = shared.global.acquire().await else {
        return Outcome::Failed("internal: executor closed".into(), ErrorClass::Transient);
    };
    let (start_word, done_word) = words(action);
    let progress = &shared.opts.progress;
    let started = Instant::now();
    progress(format!("{a}: {start_word}"));

    let heartbeat = async {
        let mut tick = tokio::time::interval(shared.opts.heartbeat);
        tick.tick().await;
        loop {
            tick.tick().await;
            let verb = start_word.trim_end_matches("...").to_lowercase();
            progress(format!(
                "{a}: Still {verb} [{}s elapsed]",
                started.elapsed().as_secs()
            ));
        }
    };
    let work = async {
        match turn {
            Turn::Delete(recorded) => {
                let Some(rec) = recorded else {
                    return Ok(Outcome::Unchanged);
                };
                destroy(shared, p.as_ref(), &rec).await?;
                let addr = a.clone();
                blocking(&shared.store, move |s| s.remove(&addr))
                    .await
                    .map_err(state_error)?;
                if let Ok(mut r) = shared.records.lock() {
                    r.remove(a);
                }
                Ok(Outcome::Applied)
            }
            Turn::Replace(recorded) => {
                if let Some(rec) = &recorded {
                    destroy(shared, p.as_ref(), rec).await?;
                }
                let ready = ready(shared, p.as_ref(), a, None, true).await?;
                act(shared, p.as_ref(), a, ready).await
            }
            Turn::Converge(ready) => act(shared, p.as_ref(), a, (*ready)?).await,
        }
    };
    let outcome = tokio::select! {
        r = work => r.unwrap_or_else(|e| Outcome::Failed(e.message, e.class)),
        () = heartbeat => unreachable_outcome(),
    };
    let secs = started.elapsed().as_secs_f64();
    match &outcome {
        Outcome::Applied => progress(format!("{a}: {done_word} after {secs:.1}s")),
        Outcome::Unchanged => progress(format!("{a}: No changes needed after {secs:.1}s")),
        Outcome::Failed(e, _) => progress(format!("{a}: Failed after {secs:.1}s: {e}")),
        Outcome::Blocked(_) => {}
    }
    outcome
}

fn unreachable_outcome() -> Outcome {
    Outcome::Failed("internal: heartbeat ended".into(), ErrorClass::Transient)
}

/// A state write that failed: the outside system may be fine, so worth a retry.
fn state_error(e: crate::state::StateError) -> ProviderError {
    ProviderError::transient(e.to_string())
}

fn timed_out(timeout: Duration) -> ProviderError {
    ProviderError::transient(format!(
        "timed out after {}",
        humantime::format_duration(timeout)
    ))
}

async fn system_permit(
    shared: &Shared<'_>,
    key: String,
    limit: usize,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    let sem = shared
        .per_system
        .lock()
        .ok()?
        .entry(key)
        .or_insert_with(|| Arc::new(Semaphore::new(limit.max(1))))
        .clone();
    sem.acquire_owned().await.ok()
}

async fn destroy(shared: &Shared<'_>, p: &dyn Provider, rec: &Record) -> Result<(), ProviderError> {
    let timeout = shared.set.get(&rec.address).map_or_else(
        || crate::desired::default_timeout(rec.kind),
        crate::desired::timeout_of,
    );
    let (key, limit) = rec.kind.model().concurrency(&rec.connection);
    let _permit = system_permit(shared, key, limit).await;
    let sink = output_sink(shared, &rec.address);
    match tokio::time::timeout(timeout, crate::provider::with_output(sink, p.destroy(rec))).await {
        Ok(r) => r,
        Err(_) => Err(timed_out(timeout)),
    }
}

/// A sink that shows a provider's lines as progress and keeps them in the run's output tail.
fn output_sink(shared: &Shared<'_>, a: &Address) -> crate::provider::OutputSink {
    let (tail, progress, address) = (
        Arc::clone(&shared.output),
        Arc::clone(&shared.opts.progress),
        a.to_string(),
    );
    Arc::new(move |line: &str| {
        let line = format!("{address}: {line}");
        if let Ok(mut t) = tail.lock() {
            if t.len() == OUTPUT_TAIL {
                t.pop_front();
            }
            t.push_back(line.clone());
        }
        progress(line);
    })
}

/// A create or update made ready, before its turn: desired state resolved, the provider's
/// [`Provider::prepare`] done and the `applying` mark on disk.
struct Ready {
    desired: Arc<Desired>,
    hash: String,
    recorded: Option<Record>,
    journal: StoreJournal,
    /// `prepare`'s error: the action fails with it, recorded like any failure, without
    /// calling `apply`.
    prepared: Result<(), ProviderError>,
}

/// Get a create or update ready (see [`Ready`]). Local work only: nothing here reaches the
/// outside system, so it may run while other actions hold the permits.
async fn ready(
    shared: &Shared<'_>,
    p: &dyn Provider,
    a: &Address,
    recorded: Option<Record>,
    fresh: bool,
) -> Result<Ready, ProviderError> {
    let desired = {
        // Look outputs up one by one: cloning every record for each action made an apply of
        // n resources cost O(n²).
        let outputs = |t: &Address| {
            shared.records.lock().ok().and_then(|records| {
                records
                    .get(t)
                    .filter(|r| r.status == Status::Ready)
                    .map(|r| r.outputs.clone())
            })
        };
        let mut resolver = Resolver::new(shared.set);
        resolver
            .desired(a, &outputs)
            .ok_or_else(|| ProviderError::permanent(format!("{a} has no manifest")))?
    };
    if !desired.spec.is_known() || !desired.connection.is_known() {
        return Err(ProviderError::permanent(
            "a value it depends on is still unknown after its dependencies were applied",
        ));
    }
    let hash = desired.spec.digest(&shared.key);
    // A create starts from nothing, except after an attempt that never finished: its record
    // holds what that attempt persisted (a generated password or passphrase the outside system
    // may already have), which the retry must reuse.
    let recorded = if fresh {
        recorded.filter(|r| r.generation == 0)
    } else {
        recorded
    };
    let now = now_ms();
    let mut rec = recorded
        .clone()
        .unwrap_or_else(|| Record::new(a.clone(), now));
    if rec.generation == 0 {
        // Keep what a destroy would need even if this first attempt never finishes.
        rec.spec = desired.spec.clone();
        rec.connection = desired.connection.clone();
        rec.depends_on = desired.depends_on.clone();
    }
    rec.status = Status::Applying;
    rec.updated_at = now;
    let journal = StoreJournal {
        store: Arc::clone(&shared.store),
        record: Mutex::new(rec),
        saved: Mutex::new(BTreeMap::new()),
    };
    // Invariant 2: the mark is on disk before the action starts. The journal holds the marked
    // record, so a journal write by `prepare` carries it; otherwise it is written and flushed
    // here (also when `prepare` failed: nothing was sent anywhere, and the failure is
    // recorded after).
    let prepared = p.prepare(&journal, &desired, recorded.as_ref()).await;
    if !matches!(prepared, Ok(true)) {
        let marked = journal.snapshot();
        blocking(&shared.store, move |s| s.put(&marked))
            .await
            .map_err(state_error)?;
    }
    Ok(Ready {
        desired,
        hash,
        recorded,
        journal,
        prepared: prepared.map(|_| ()),
    })
}

/// Run a ready create or update under its timeout and record the outcome.
async fn act(
    shared: &Shared<'_>,
    p: &dyn Provider,
    a: &Address,
    ready: Ready,
) -> Result<Outcome, ProviderError> {
    let Ready {
        desired,
        hash,
        recorded,
        journal,
        prepared,
    } = ready;
    let (key, limit) = a.kind.model().concurrency(&desired.connection);
    let _permit = system_permit(shared, key, limit).await;
    let sink = output_sink(shared, a);
    let attempt = async {
        prepared?;
        match p.apply(&journal, &desired, recorded.as_ref()).await {
            // Someone else changed the object: observe it again, then retry once from what
            // this attempt persisted (kube's `error_policy`; providers re-read before acting).
            Err(e) if e.class == ErrorClass::Conflict => {
                (shared.opts.progress)(format!(
                    "{a}: Conflict ({e}): observing again, then retrying once"
                ));
                let again = journal.snapshot();
                p.observe(&desired, Some(&again)).await?;
                p.apply(&journal, &desired, Some(&again)).await
            }
            r => r,
        }
    };
    let result =
        tokio::time::timeout(desired.timeout, crate::provider::with_output(sink, attempt)).await;
    let mut rec = journal.snapshot();
    rec.updated_at = now_ms();
    let outcome = match result {
        Ok(Ok(applied)) => {
            rec.spec = desired.spec.clone();
            rec.connection = desired.connection.clone();
            rec.spec_hash = hash;
            rec.outputs = applied.outputs;
            rec.private.extend(applied.private);
            rec.status = Status::Ready;
            rec.last_error = None;
            rec.error_class = None;
            rec.failed_inputs = None;
            rec.prevent_destroy = desired.prevent_destroy;
            rec.depends_on = desired.depends_on.clone();
            rec.generation += 1;
            Ok(Outcome::Applied)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(timed_out(desired.timeout)),
    };
    if let Err(e) = &outcome {
        rec.status = Status::Failed;
        rec.last_error = Some(e.message.clone());
        rec.error_class = Some(e.class);
        rec.failed_inputs = Some(inputs_digest(&desired, &shared.key));
    }
    // Neither waited on to be durable (the run record's flush at the end covers it) nor to be
    // written: dependents read outputs from memory, and `apply` awaits every such write before
    // it stores the run. A crash before then leaves the `applying` record written above, with
    // what the provider journaled, and the next run observes the object and converges it
    // again.
    let saved = rec.clone();
    let store = Arc::clone(&shared.store);
    let write = tokio::task::spawn_blocking(move || store.put_lazy(&saved));
    if let Ok(mut pending) = shared.final_writes.lock() {
        pending.push((a.clone(), write));
    }
    if let Ok(mut r) = shared.records.lock() {
        r.insert(a.clone(), rec);
    }
    outcome
}

#[cfg(test)]
mod tests {
    //! Executor invariants with a fake provider over a real (temporary) state store.

    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::address::Kind;
    use crate::engine::{PlanOptions, plan};
    use crate::provider::{Applied, Desired, Observed};
    use crate::state::SledStore;

    /// Stands in for the postgres provider (the models are the real ones): sleeps `delay` per
    /// apply, fails resources whose owner is `fail`, and counts concurrency.
    struct Slow {
        delay: Duration,
        running: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl Provider for Slow {
        fn name(&self) -> &'static str {
            "postgres"
        }
        async fn observe(
            &self,
            _: &Desired,
            _: Option<&Record>,
        ) -> Result<Option<Observed>, ProviderError> {
            Ok(None)
        }
        async fn apply(
            &self,
            _: &dyn Journal,
            d: &Desired,
            _: Option<&Record>,
        ) -> Result<Applied, ProviderError> {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(self.delay).await;
            self.running.fetch_sub(1, Ordering::SeqCst);
            if d.spec.get("owner").and_then(Value::as_str) == Some("fail") {
                return Err(ProviderError::permanent("told to fail"));
            }
            let mut a = Applied::default();
            a.outputs.insert(
                "username".into(),
                d.spec.get("owner").cloned().unwrap_or(Value::Null),
            );
            Ok(a)
        }
        async fn destroy(&self, _: &Record) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    const SERVER: &str = "apiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {host: h, user: u}\n";

    fn db(name: &str, owner: &str) -> String {
        format!(
            "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {{name: {name}}}\nspec: {{server: main, owner: \"{owner}\"}}\n"
        )
    }

    async fn run(
        docs: &str,
        provider: Arc<dyn Provider>,
        parallelism: usize,
        heartbeat: Duration,
    ) -> (Run, Vec<String>, tempfile::TempDir) {
        let (run, lines, _store, dir) = run_with(docs, parallelism, heartbeat, |_| provider).await;
        (run, lines, dir)
    }

    /// Plans and applies `docs` with `provider(store)`; the run, its progress lines, the
    /// store (still open) and its directory.
    async fn run_with(
        docs: &str,
        parallelism: usize,
        heartbeat: Duration,
        provider: impl FnOnce(&Arc<dyn StateStore>) -> Arc<dyn Provider>,
    ) -> (Run, Vec<String>, Arc<dyn StateStore>, tempfile::TempDir) {
        let set = crate::manifest::load_files(
            Path::new("/m"),
            vec![(PathBuf::from("m.yaml"), Ok(format!("{SERVER}{docs}")))],
        )
        .expect("manifests");
        let graph = Graph::build(&set).expect("graph");
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> = Arc::new(SledStore::open(dir.path()).expect("store"));
        let providers = vec![provider(&store)];
        let plan = plan(&set, &graph, &store, &providers, &PlanOptions::default())
            .await
            .expect("plan");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        let opts = ApplyOptions {
            parallelism,
            trigger: Trigger::Cli,
            progress: Arc::new(move |l| sink.lock().expect("lines").push(l)),
            heartbeat,
            revision: None,
        };
        let run = apply(&set, &graph, &plan, &store, &providers, opts)
            .await
            .expect("apply");
        let lines = lines.lock().expect("lines").clone();
        (run, lines, store, dir)
    }

    fn slow(delay_ms: u64) -> Arc<Slow> {
        Arc::new(Slow {
            delay: Duration::from_millis(delay_ms),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        })
    }

    /// Checks, at the moment it would act on the outside system, that its resource is
    /// recorded `applying`; when `prepares`, its `prepare` journals a "password" first. Logs
    /// when each resource is prepared and when its apply starts and ends.
    struct Marks {
        prepares: bool,
        store: std::sync::OnceLock<Arc<dyn StateStore>>,
        seen: Mutex<Vec<(Status, bool, Option<Value>)>>,
        events: Mutex<Vec<String>>,
    }

    impl Marks {
        fn new(prepares: bool) -> Arc<Marks> {
            Arc::new(Marks {
                prepares,
                store: std::sync::OnceLock::new(),
                seen: Mutex::new(Vec::new()),
                events: Mutex::new(Vec::new()),
            })
        }
        /// Plans and applies `docs` with this provider, which reads the run's store.
        async fn run(
            self: &Arc<Self>,
            docs: &str,
        ) -> (Run, Arc<dyn StateStore>, tempfile::TempDir) {
            let (run, _, store, dir) = run_with(docs, 1, Duration::from_secs(10), |s| {
                assert!(self.store.set(Arc::clone(s)).is_ok());
                self.clone()
            })
            .await;
            (run, store, dir)
        }
        fn event(&self, what: &str, d: &Desired) {
            self.events
                .lock()
                .expect("events")
                .push(format!("{what} {}", d.address.name));
        }
    }

    #[async_trait]
    impl Provider for Marks {
        fn name(&self) -> &'static str {
            "postgres"
        }
        async fn prepare(
            &self,
            journal: &dyn Journal,
            d: &Desired,
            _: Option<&Record>,
        ) -> Result<bool, ProviderError> {
            if self.prepares {
                journal
                    .save_private(BTreeMap::from([("password".into(), Value::Int(1))]))
                    .await?;
            }
            self.event("prepare", d);
            Ok(self.prepares)
        }
        async fn observe(
            &self,
            _: &Desired,
            _: Option<&Record>,
        ) -> Result<Option<Observed>, ProviderError> {
            Ok(None)
        }
        async fn apply(
            &self,
            journal: &dyn Journal,
            d: &Desired,
            _: Option<&Record>,
        ) -> Result<Applied, ProviderError> {
            self.event("start", d);
            let store = self.store.get().expect("store set before the apply");
            let rec = store
                .get(&d.address)
                .expect("read state")
                .expect("a record exists before the action");
            self.seen.lock().expect("seen").push((
                rec.status,
                rec.private.contains_key("password"),
                journal.journaled("password"),
            ));
            tokio::time::sleep(Duration::from_millis(20)).await;
            self.event("end", d);
            Ok(Applied::default())
        }
        async fn destroy(&self, _: &Record) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_applying_mark_is_written_before_the_action_whether_or_not_prepare_carries_it() {
        for prepares in [false, true] {
            let marks = Marks::new(prepares);
            let (run, store, _dir) = marks.run(&db("a", "o")).await;
            assert_eq!(run.exit_code, 0);
            assert_eq!(
                *marks.seen.lock().expect("seen"),
                [(
                    Status::Applying,
                    prepares,
                    prepares.then_some(Value::Int(1))
                )],
                "prepares = {prepares}"
            );
            let done = store
                .get(&"PostgresDatabase.a".parse().expect("address"))
                .expect("read")
                .expect("record");
            assert_eq!(done.status, Status::Ready, "the final write landed");
        }
    }

    #[tokio::test]
    async fn the_next_action_is_prepared_while_one_runs_and_no_further_ahead() {
        let docs: String = (0..LOOKAHEAD + 4)
            .map(|i| db(&format!("r{i}"), &format!("o{i}")))
            .collect();
        let marks = Marks::new(true);
        let (run, _store, _dir) = marks.run(&docs).await;
        assert_eq!(run.exit_code, 0);
        let events = marks.events.lock().expect("events").clone();
        // Ready but not ended: at most the one running plus LOOKAHEAD more.
        let mut ahead = 0usize;
        let mut most = 0usize;
        let mut overlapped = false;
        let mut running = false;
        for e in &events {
            match e.split_once(' ').map(|(w, _)| w) {
                Some("prepare") => {
                    ahead += 1;
                    overlapped |= running;
                }
                Some("start") => running = true,
                Some("end") => {
                    ahead -= 1;
                    running = false;
                }
                _ => unreachable!("{e}"),
            }
            most = most.max(ahead);
        }
        assert!(overlapped, "a prepare ran during an apply: {events:?}");
        assert_eq!(most, 1 + LOOKAHEAD, "{events:?}");
        assert_eq!(
            events.iter().filter(|e| e.starts_with("end")).count(),
            LOOKAHEAD + 4
        );
    }

    #[tokio::test]
    async fn a_failure_blocks_its_dependents_and_nothing_else() {
        let docs = [
            db("bad", "fail"),
            db("child", "${PostgresDatabase.bad.status.outputs.username}"),
            db(
                "grandchild",
                "${PostgresDatabase.child.status.outputs.username}",
            ),
            db("free", "ok"),
        ]
        .concat();
        let (run, _, _dir) = run(&docs, slow(1), 10, Duration::from_secs(10)).await;
        let outcome = |a: &str| {
            run.results
                .iter()
                .find(|r| r.address == a)
                .map(|r| (r.outcome, r.detail.clone().unwrap_or_default()))
                .expect("result")
        };
        assert_eq!(outcome("PostgresDatabase.bad").0, RunOutcome::Failed);
        assert_eq!(
            outcome("PostgresDatabase.child"),
            (
                RunOutcome::Blocked,
                "blocked by PostgresDatabase.bad".into()
            )
        );
        assert_eq!(
            outcome("PostgresDatabase.grandchild"),
            (
                RunOutcome::Blocked,
                "blocked by PostgresDatabase.bad".into()
            )
        );
        assert_eq!(outcome("PostgresDatabase.free").0, RunOutcome::Applied);
        assert_eq!(run.exit_code, 1);
    }

    #[tokio::test]
    async fn parallelism_and_the_per_system_limit_bound_concurrent_actions() {
        let docs: String = (0..8)
            .map(|i| db(&format!("d{i}"), &format!("ok{i}")))
            .collect();
        // Every database is on one server: the model's per-server limit bounds them.
        let (_, limit) = Kind::of("PostgresDatabase")
            .model()
            .concurrency(&Value::map());
        assert!(limit < 8);
        let p = slow(30);
        run(&docs, p.clone(), 10, Duration::from_secs(10)).await;
        assert_eq!(p.peak.load(Ordering::SeqCst), limit, "per-system limit");
        let p = slow(30);
        run(&docs, p.clone(), 2, Duration::from_secs(10)).await;
        assert_eq!(p.peak.load(Ordering::SeqCst), 2, "--parallelism");
    }

    #[tokio::test]
    async fn dependents_start_after_their_dependencies_with_real_outputs() {
        let docs = [
            db("parent", "alice"),
            db(
                "child",
                "${PostgresDatabase.parent.status.outputs.username}",
            ),
        ]
        .concat();
        let (run, lines, dir) = run(&docs, slow(5), 10, Duration::from_secs(10)).await;
        assert_eq!(run.exit_code, 0, "{lines:?}");
        let pos = |s: &str| lines.iter().position(|l| l == s).unwrap_or(usize::MAX);
        assert!(
            pos("PostgresDatabase.parent: Creating...")
                < pos("PostgresDatabase.child: Creating...")
        );
        assert!(
            lines
                .iter()
                .position(|l| l.starts_with("PostgresDatabase.parent: Creation complete"))
                < Some(pos("PostgresDatabase.child: Creating..."))
        );
        let store = SledStore::open(dir.path()).expect("store");
        let child = store
            .get(&"PostgresDatabase.child".parse().expect("addr"))
            .expect("get")
            .expect("recorded");
        assert_eq!(child.spec.get("owner"), Some(&Value::Str("alice".into())));
        assert_eq!(child.status, Status::Ready);
    }

    /// Stands in for the postgres provider: fails its first applies with the errors it is
    /// given; counts applies and observations.
    #[derive(Default)]
    struct Scripted {
        errors: Mutex<Vec<ProviderError>>,
        applies: AtomicUsize,
        observes: AtomicUsize,
    }

    #[async_trait]
    impl Provider for Scripted {
        fn name(&self) -> &'static str {
            "postgres"
        }
        async fn observe(
            &self,
            _: &Desired,
            _: Option<&Record>,
        ) -> Result<Option<Observed>, ProviderError> {
            self.observes.fetch_add(1, Ordering::SeqCst);
            Ok(None)
        }
        async fn apply(
            &self,
            _: &dyn Journal,
            _: &Desired,
            _: Option<&Record>,
        ) -> Result<Applied, ProviderError> {
            self.applies.fetch_add(1, Ordering::SeqCst);
            match self.errors.lock().expect("errors").pop() {
                Some(e) => Err(e),
                None => Ok(Applied::default()),
            }
        }
        async fn destroy(&self, _: &Record) -> Result<(), ProviderError> {
            Ok(())
        }
    }

    fn scripted(errors: Vec<ProviderError>) -> Arc<Scripted> {
        Arc::new(Scripted {
            errors: Mutex::new(errors),
            ..Scripted::default()
        })
    }

    fn recorded(dir: &tempfile::TempDir, a: &str) -> Record {
        SledStore::open(dir.path())
            .expect("store")
            .get(&a.parse().expect("addr"))
            .expect("get")
            .expect("recorded")
    }

    #[tokio::test]
    async fn a_conflict_is_observed_again_and_retried_once() {
        let p = scripted(vec![ProviderError::conflict("job modify index changed")]);
        let (run, lines, dir) = run(&db("a", "ok"), p.clone(), 10, Duration::from_secs(10)).await;
        assert_eq!(run.results[0].outcome, RunOutcome::Applied, "{lines:?}");
        assert_eq!(p.applies.load(Ordering::SeqCst), 2);
        // Once while planning (a resource not in state is looked for, so that one found
        // outside tend is not taken over), once after the conflict.
        assert_eq!(p.observes.load(Ordering::SeqCst), 2);
        assert!(
            lines.iter().any(|l| l
                == "PostgresDatabase.a: Conflict (job modify index changed): observing again, then retrying once"),
            "{lines:?}"
        );
        let rec = recorded(&dir, "PostgresDatabase.a");
        assert_eq!((rec.status, rec.error_class), (Status::Ready, None));
    }

    #[tokio::test]
    async fn a_conflict_that_persists_fails_with_its_class_after_one_retry() {
        let p = scripted(vec![
            ProviderError::conflict("still changing"),
            ProviderError::conflict("changing"),
        ]);
        let (run, _, dir) = run(&db("a", "ok"), p.clone(), 10, Duration::from_secs(10)).await;
        assert_eq!(p.applies.load(Ordering::SeqCst), 2, "exactly one retry");
        let r = &run.results[0];
        assert_eq!(
            (r.outcome, r.error_class, r.detail.as_deref()),
            (
                RunOutcome::Failed,
                Some(ErrorClass::Conflict),
                Some("still changing")
            )
        );
        let rec = recorded(&dir, "PostgresDatabase.a");
        assert_eq!(rec.status, Status::Failed);
        assert_eq!(rec.error_class, Some(ErrorClass::Conflict));
        assert!(rec.failed_inputs.is_some());
    }

    #[tokio::test]
    async fn other_classes_are_not_retried_by_the_executor_and_are_recorded() {
        for (e, class) in [
            (
                ProviderError::transient("server starting"),
                ErrorClass::Transient,
            ),
            (
                ProviderError::permanent("reserved name"),
                ErrorClass::Permanent,
            ),
        ] {
            let p = scripted(vec![e]);
            let (run, _, dir) = run(&db("a", "ok"), p.clone(), 10, Duration::from_secs(10)).await;
            assert_eq!(p.applies.load(Ordering::SeqCst), 1);
            assert_eq!(run.results[0].error_class, Some(class));
            let rec = recorded(&dir, "PostgresDatabase.a");
            assert_eq!((rec.status, rec.error_class), (Status::Failed, Some(class)));
        }
    }

    #[tokio::test]
    async fn long_actions_report_that_they_are_still_running() {
        let (_, lines, _dir) =
            run(&db("slow", "ok"), slow(260), 10, Duration::from_millis(100)).await;
        let still: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("PostgresDatabase.slow: Still creating"))
            .collect();
        assert!(still.len() >= 2, "{lines:?}");
    }

    #[test]
    fn progress_lines_are_read_back_as_steps() {
        for a in [
            Action::Create,
            Action::Update,
            Action::Replace,
            Action::Delete,
            Action::Adopt,
        ] {
            let (start, done) = words(a);
            assert_eq!(
                progress_step(&format!("PostgresDatabase.a: {start}")),
                Some(("PostgresDatabase.a", Step::Started))
            );
            assert_eq!(
                progress_step(&format!("PostgresDatabase.a: {done} after 0.3s")),
                Some(("PostgresDatabase.a", Step::Done))
            );
        }
        assert_eq!(
            progress_step("TenantInstance.acme/NomadJob: Failed after 1.0s: boom"),
            Some(("TenantInstance.acme/NomadJob", Step::Failed))
        );
        assert_eq!(
            progress_step("NomadJob.web: Skipped (blocked by PostgresDatabase.a)"),
            Some(("NomadJob.web", Step::Failed))
        );
        assert_eq!(
            progress_step("NomadJob.web: No changes needed after 0.1s"),
            Some(("NomadJob.web", Step::Done))
        );
        // Heartbeats and a provider's own lines are not steps.
        assert_eq!(
            progress_step("PulumiStack.s: Still creating [10s elapsed]"),
            None
        );
        assert_eq!(
            progress_step("PulumiStack.s: + digitalocean:index:DatabaseCluster creating"),
            None
        );
    }
}
