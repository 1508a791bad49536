//! Planning against the real world: resolve each managed resource's desired state in graph
//! order, observe it through its provider (refresh), and let the pure `plan::decide` say what
//! to do. Async and I/O-bound (state reads, provider reads); the decisions themselves are pure.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};

use crate::address::Address;
use crate::desired::Resolver;
use crate::graph::Graph;
use crate::manifest::ManifestSet;
use crate::plan::{self, Action, Observation, Plan, ResourceChange};
use crate::provider::{self, Desired, Provider};
use crate::state::{Record, Sealed, StateError, StateStore, Status};
use crate::value::Value;

/// How to plan.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Observe real systems (drift). `--refresh=false` trusts state.
    pub refresh: bool,
    /// With `refresh`: refresh only resources whose spec changed since their last apply, that
    /// have no applied record, or that depend on a resource this plan changes; the rest are
    /// decided from state (the daemon on a file event; drift of the rest is healed by its
    /// resync, which refreshes everything).
    pub changed_only: bool,
    /// Only these resources (and what they depend on); empty means all.
    pub targets: Vec<Address>,
    /// Concurrent provider reads.
    pub parallelism: usize,
    /// The deadline of one resource's refresh; `None`: the resource's own action timeout. A
    /// refresh past it is a warning on that resource, and the plan goes on from state.
    pub refresh_timeout: Option<std::time::Duration>,
}

impl Default for PlanOptions {
    fn default() -> Self {
        PlanOptions {
            refresh: true,
            changed_only: false,
            targets: Vec::new(),
            parallelism: 10,
            refresh_timeout: None,
        }
    }
}

/// Why a refresh that was attempted gave no observation.
enum Unanswered {
    /// The provider failed (logged).
    Failed,
    /// No answer within the deadline.
    TimedOut(std::time::Duration),
}

/// Run a blocking state call off the async runtime.
pub async fn blocking<T, F>(store: &Arc<dyn StateStore>, f: F) -> Result<T, StateError>
where
    T: Send + 'static,
    F: FnOnce(&dyn StateStore) -> Result<T, StateError> + Send + 'static,
{
    let store = Arc::clone(store);
    tokio::task::spawn_blocking(move || f(store.as_ref()))
        .await
        .map_err(|e| StateError::Sled(format!("state task failed: {e}")))?
}

/// The set of addresses a targeted run touches: the targets and everything they depend on.
pub fn targeted(graph: &Graph, targets: &[Address]) -> Option<BTreeSet<Address>> {
    if targets.is_empty() {
        return None;
    }
    let mut set = BTreeSet::new();
    for t in targets {
        set.insert(t.clone());
        set.extend(graph.ancestors(t));
    }
    Some(set)
}

/// Make a plan.
///
/// Memory stays proportional to the stored bytes, not to decoded state: records are listed
/// sealed and decoded one at a time while their resource is planned, and each observation is
/// decided as it arrives instead of collecting a whole wave's.
pub async fn plan(
    set: &ManifestSet,
    graph: &Graph,
    store: &Arc<dyn StateStore>,
    providers: &[Arc<dyn Provider>],
    opts: &PlanOptions,
) -> anyhow::Result<Plan> {
    // Heads alone: most resources are decided from them; the few planned are unsealed.
    let mut records: Vec<Sealed> = blocking(store, |s| s.list_heads()).await?;
    records.sort_by(|a, b| a.address.cmp(&b.address));
    let records = Heads(records);
    let key = store.digest_key().to_vec();
    let _refreshing = opts.refresh.then(|| Refreshing::begin(providers));
    let scope = targeted(graph, &opts.targets);
    let in_scope = |a: &Address| scope.as_ref().is_none_or(|s| s.contains(a));

    // Levels: a resource's level is one more than its deepest dependency's.
    let mut level: BTreeMap<&Address, usize> = BTreeMap::new();
    for a in graph.order() {
        let l = graph
            .dependencies(a)
            .iter()
            .filter_map(|d| level.get(d).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level.insert(a, l);
    }
    let mut waves: BTreeMap<usize, Vec<&Address>> = BTreeMap::new();
    for m in set.managed() {
        if in_scope(&m.address) {
            waves.entry(level[&m.address]).or_default().push(&m.address);
        }
    }

    let mut resolver = Resolver::new(set);
    // A decided resource keeps its desired state only while a dependent may still need it.
    let mut decided: BTreeMap<Address, (Decided, Option<Arc<Desired>>)> = BTreeMap::new();
    let mut plan = Plan::default();
    let mut checks = Vec::new();
    // A wave is resolved and observed a chunk at a time, so at most a chunk of desired states
    // of resources nothing depends on is alive at once.
    let chunk = opts.parallelism.max(1) * 32;
    for (_, wave) in waves {
        for part in wave.chunks(chunk) {
            let mut items = Vec::new();
            for &a in part {
                let outputs = |t: &Address| planned_outputs(t, &decided, &records, store);
                let Some(desired) = resolver.desired(a, &outputs) else {
                    continue;
                };
                let Some(p) = provider::for_kind(providers, a.kind) else {
                    continue;
                };
                // `changed_only`: refresh only what changed and what depends on a change.
                let refresh = opts.refresh
                    && (!opts.changed_only
                        || graph.dependencies(a).iter().any(|d| {
                            decided
                                .get(d)
                                .is_some_and(|(c, _)| c.action() != Action::NoOp)
                        }));
                items.push((desired, p, refresh));
            }
            let mut observed = stream::iter(items)
                .map(|(desired, p, refresh)| {
                    let sealed = records.get(&desired.address);
                    let hash = desired.spec.digest(&key);
                    async move {
                        // Applied as it stands and not refreshed: decided from the record's
                        // head, its spec and secrets never decoded.
                        let applied_as_is = sealed.is_some_and(|s| {
                            s.status == Status::Ready && s.generation > 0 && s.spec_hash == hash
                        });
                        // What changed is refreshed even when only changes are.
                        let refresh = refresh || (opts.refresh && !applied_as_is);
                        if !refresh && applied_as_is {
                            return Ok::<_, StateError>((desired, hash, None, Observation::NotRefreshed, None, true));
                        }
                        let rec = sealed.map(|s| store.unseal(s)).transpose()?;
                        // A resource tend has no record of is always looked for: finding one
                        // that exists outside state is how tend avoids taking it over.
                        let looked_for = match &rec {
                            Some(_) => refresh,
                            None => desired.address.kind.model().checks_ownership(),
                        };
                        let (obs, unanswered) = if looked_for && desired.connection.is_known() {
                            let deadline = opts.refresh_timeout.unwrap_or(desired.timeout);
                            match tokio::time::timeout(deadline, p.observe(&desired, rec.as_ref()))
                                .await
                            {
                                Ok(Ok(Some(o))) => (Observation::Present(o), None),
                                Ok(Ok(None)) => (Observation::Absent, None),
                                Ok(Err(e)) => {
                                    tracing::warn!(address = %desired.address, error = %e, "refresh failed");
                                    (Observation::NotRefreshed, Some(Unanswered::Failed))
                                }
                                Err(_) => {
                                    tracing::warn!(address = %desired.address, timeout = ?deadline, "refresh timed out");
                                    (
                                        Observation::NotRefreshed,
                                        Some(Unanswered::TimedOut(deadline)),
                                    )
                                }
                            }
                        } else {
                            (Observation::NotRefreshed, None)
                        };
                        Ok((desired, hash, rec, obs, unanswered, false))
                    }
                })
                .buffer_unordered(opts.parallelism.max(1));
            let mut leaves = Vec::new();
            while let Some(next) = observed.next().await {
                let (desired, hash, rec, obs, unanswered, unchanged) = next?;
                let a = &desired.address;
                match (unanswered, &rec) {
                    (Some(Unanswered::TimedOut(deadline)), _) => {
                        plan.timed_out.push(a.clone());
                        plan.warnings.push(format!(
                            "could not refresh {a}: no answer within {}; planned from state alone",
                            humantime::format_duration(deadline)
                        ));
                    }
                    (Some(Unanswered::Failed), Some(_)) => plan.warnings.push(format!(
                        "could not refresh {a}: planned from state alone (see the log for the error)"
                    )),
                    (Some(Unanswered::Failed), None) => plan.warnings.push(format!(
                        "could not check whether {a} already exists outside tend (see the log for the error)"
                    )),
                    (None, _) => {}
                }
                if let Observation::Present(o) = &obs {
                    plan.warnings.extend(
                        o.warnings
                            .iter()
                            .map(|w| format!("{}: {w}", desired.address)),
                    );
                }
                let model = desired.address.kind.model();
                let change = if unchanged {
                    plan::unchanged(&desired.address)
                } else {
                    plan.errors
                        .extend(plan::ownership_error(model, &desired, rec.as_ref(), &obs));
                    plan::decide(model, &desired, &hash, rec.as_ref(), &obs)
                };
                if change.action == Action::Replace && desired.prevent_destroy {
                    plan.errors.push(plan::PlanError::about(
                        &desired.address,
                        format!(
                            "{} has lifecycle.prevent_destroy set, but this plan would replace it",
                            desired.address
                        ),
                    ));
                }
                if opts.refresh
                    && change.action != Action::NoOp
                    && let Some(p) = provider::for_kind(providers, desired.address.kind)
                {
                    checks.push(Preflight {
                        action: change.action,
                        deadline: opts.refresh_timeout.unwrap_or(desired.timeout),
                        desired: Some(Arc::clone(&desired)),
                        recorded: rec.clone(),
                        provider: p,
                    });
                }
                let address = desired.address.clone();
                let keep = if graph.dependents(&address).is_empty() {
                    leaves.push(address.clone());
                    None
                } else {
                    Some(desired)
                };
                decided.insert(address, (Decided::from(change), keep));
            }
            drop(observed);
            for a in &leaves {
                resolver.invalidate(a);
            }
        }
    }
    for sealed in &records.0 {
        let a = &sealed.address;
        if set.get(a).is_none() && in_scope(a) {
            let rec = store.unseal(sealed)?;
            let (change, error) = plan::decide_orphan(&rec);
            plan.errors.extend(error);
            if opts.refresh
                && let Some(p) = provider::for_kind(providers, a.kind)
            {
                checks.push(Preflight {
                    action: change.action,
                    deadline: opts
                        .refresh_timeout
                        .unwrap_or(a.kind.model().schema().default_timeout),
                    desired: None,
                    recorded: Some(rec),
                    provider: p,
                });
            }
            plan.changes.push(change);
        }
    }
    preflight(checks, opts.parallelism, &mut plan).await;
    plan.warnings.sort();
    plan.changes.reserve(decided.len());
    while let Some((a, (c, _))) = decided.pop_first() {
        plan.changes.push(c.into_change(a));
    }
    plan.changes.sort_by(|a, b| a.address.cmp(&b.address));
    Ok(plan)
}

/// `tend import ADDR ID` (Terraform's verb): record an object that exists outside tend's state,
/// for a resource the manifests declare, as it was found, changing nothing in it. The record
/// carries [`plan::IMPORTED`] as its spec digest, so the next plan shows what applying the
/// manifest changes. What a kind never adopts (`KindModel::refuse_adoption`) is not imported
/// either. Returns the record written.
pub async fn import(
    set: &ManifestSet,
    graph: &Graph,
    store: &Arc<dyn StateStore>,
    providers: &[Arc<dyn Provider>],
    address: &Address,
    id: &str,
    deadline: std::time::Duration,
) -> anyhow::Result<Record> {
    if !set.managed().any(|m| &m.address == address) {
        anyhow::bail!(
            "{address} is not a resource the manifests declare: write its manifest first, then import the object it names"
        );
    }
    let a = address.clone();
    if let Some(rec) = blocking(store, move |s| s.get(&a)).await?
        && rec.generation > 0
    {
        anyhow::bail!("{address} is already in state: nothing to import");
    }
    let model = address.kind.model();
    let mut resolver = Resolver::new(set);
    let mut recorded = BTreeMap::new();
    for d in graph.ancestors(address) {
        let key = d.clone();
        if let Some(r) = blocking(store, move |s| s.get(&key)).await? {
            recorded.insert(d.clone(), r.outputs);
        }
    }
    let outputs = |t: &Address| recorded.get(t).cloned();
    let desired = resolver
        .desired(address, &outputs)
        .ok_or_else(|| anyhow::anyhow!("{address} cannot be resolved"))?;
    if !desired.spec.is_known() || !desired.connection.is_known() {
        anyhow::bail!(
            "{address} depends on outputs of resources not applied yet: apply those first (`tend apply --target`), then import"
        );
    }
    let Some(want) = model.import_id(&desired) else {
        anyhow::bail!("{} resources cannot be imported", address.kind);
    };
    if want != id {
        anyhow::bail!(
            "{address}'s manifest names {want:?}, not {id:?}: import the object the manifest declares"
        );
    }
    let p = provider::for_kind(providers, address.kind)
        .ok_or_else(|| anyhow::anyhow!("{} resources cannot be imported", address.kind))?;
    let found = importing(address, deadline, p.observe(&desired, None)).await?;
    let Some(observed) = found else {
        anyhow::bail!("there is no {id:?} to import for {address}: nothing of that name exists");
    };
    if let Some(why) = model.refuse_adoption(&desired, &observed) {
        anyhow::bail!("{address} cannot be imported: {why}");
    }
    let private = importing(address, deadline, p.import(&desired)).await?;
    let now = crate::apply::now_ms();
    let mut rec = Record::new(address.clone(), now);
    rec.spec_hash = plan::IMPORTED.to_owned();
    rec.spec = desired.spec.clone();
    rec.connection = desired.connection.clone();
    rec.outputs = model.known_outputs(&desired);
    rec.private = private;
    rec.status = Status::Ready;
    rec.prevent_destroy = desired.prevent_destroy;
    rec.depends_on = graph.dependencies(address);
    rec.updated_at = now;
    rec.generation = 1;
    let written = rec.clone();
    blocking(store, move |s| s.put(&rec)).await?;
    Ok(written)
}

/// One provider call of `tend import`, under its deadline, errors naming the address.
async fn importing<T>(
    address: &Address,
    deadline: std::time::Duration,
    call: impl std::future::Future<Output = Result<T, provider::ProviderError>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(deadline, call).await {
        Ok(answer) => answer.map_err(|e| anyhow::anyhow!("importing {address}: {e}")),
        Err(_) => anyhow::bail!(
            "importing {address}: no answer within {}",
            humantime::format_duration(deadline)
        ),
    }
}

/// The providers' refresh window for one plan, closed when the plan ends however it ends.
struct Refreshing<'a>(&'a [Arc<dyn Provider>]);

impl<'a> Refreshing<'a> {
    fn begin(providers: &'a [Arc<dyn Provider>]) -> Self {
        for p in providers {
            p.begin_refresh();
        }
        Refreshing(providers)
    }
}

impl Drop for Refreshing<'_> {
    fn drop(&mut self) {
        for p in self.0 {
            p.end_refresh();
        }
    }
}

/// A planned change whose permissions its provider checks before anything is applied.
struct Preflight {
    action: Action,
    deadline: std::time::Duration,
    desired: Option<Arc<Desired>>,
    recorded: Option<Record>,
    provider: Arc<dyn Provider>,
}

/// Ask each changed resource's provider what the change needs that the credentials lack: each
/// missing permission is a plan error on that resource (found now, not as a refusal halfway
/// through an apply); a check that cannot be made is a warning.
async fn preflight(checks: Vec<Preflight>, parallelism: usize, plan: &mut Plan) {
    let mut results = stream::iter(checks)
        .map(|c| async move {
            let address = c
                .desired
                .as_ref()
                .map(|d| d.address.clone())
                .or_else(|| c.recorded.as_ref().map(|r| r.address.clone()));
            let checked = tokio::time::timeout(
                c.deadline,
                c.provider
                    .preflight(c.action, c.desired.as_deref(), c.recorded.as_ref()),
            )
            .await;
            (address, checked)
        })
        .buffer_unordered(parallelism.max(1));
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    while let Some((address, checked)) = results.next().await {
        let Some(a) = address else { continue };
        match checked {
            Ok(Ok(missing)) => errors.extend(
                missing
                    .into_iter()
                    .map(|m| plan::PlanError::about(&a, format!("{a}: {m}"))),
            ),
            Ok(Err(e)) => warnings.push(format!("could not check the permissions {a} needs: {e}")),
            Err(_) => warnings.push(format!(
                "could not check the permissions {a} needs: no answer in time"
            )),
        }
    }
    // Answers arrive in any order; the plan lists them in address order.
    errors.sort_by(|x: &plan::PlanError, y| x.address.cmp(&y.address));
    plan.errors.extend(errors);
    plan.warnings.extend(warnings);
}

/// Outputs a dependent may rely on during planning: recorded ones when the resource will not
/// change, what the kind's model can tell from the spec otherwise.
fn planned_outputs(
    a: &Address,
    decided: &BTreeMap<Address, (Decided, Option<Arc<Desired>>)>,
    records: &Heads,
    store: &Arc<dyn StateStore>,
) -> Option<BTreeMap<String, Value>> {
    let (change, desired) = decided.get(a)?;
    if change.action() == Action::NoOp {
        // A record that no longer decodes has no outputs to offer; the plan already failed
        // on it when its own resource was planned.
        return records
            .get(a)
            .and_then(|s| store.unseal(s).ok())
            .map(|r| r.outputs);
    }
    let desired = desired.as_ref()?;
    Some(a.kind.model().known_outputs(desired))
}

/// The records' heads a plan decides from, sorted by address.
struct Heads(Vec<Sealed>);

impl Heads {
    fn get(&self, a: &Address) -> Option<&Sealed> {
        let i = self.0.binary_search_by(|s| s.address.cmp(a)).ok()?;
        self.0.get(i)
    }
}

/// What the plan decided for one resource while it plans the rest: a no-op with nothing to
/// say is kept as that alone (most of a big plan), anything else whole.
enum Decided {
    Unchanged,
    Change(Box<ResourceChange>),
}

impl From<ResourceChange> for Decided {
    fn from(change: ResourceChange) -> Self {
        if change == plan::unchanged(&change.address) {
            Decided::Unchanged
        } else {
            Decided::Change(Box::new(change))
        }
    }
}

impl Decided {
    fn action(&self) -> Action {
        match self {
            Decided::Unchanged => Action::NoOp,
            Decided::Change(c) => c.action,
        }
    }

    fn into_change(self, address: Address) -> ResourceChange {
        match self {
            Decided::Unchanged => plan::unchanged(&address),
            Decided::Change(c) => *c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Dump, Record, SledStore};
    use crate::value::Sensitive;

    const MANIFESTS: &str = "apiVersion: tend/v1\nkind: Credential\nmetadata: {name: pg}\nspec:\n  provider: postgres\n  data: {host: db.invalid, port: 5432, user: admin, password: {fromFile: admin.password}}\n---\napiVersion: tend/v1\nkind: PostgresServer\nmetadata: {name: main}\nspec: {sslmode: disable}\n---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: a}\nspec: {server: main, database: app_a, owner: app_a}\n---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: b}\nspec: {server: main, database: app_b, owner: app_b}\n";

    /// `MANIFESTS` in `<dir>/manifests`, with the admin password file it reads.
    fn manifests(dir: &std::path::Path) -> std::path::PathBuf {
        let root = dir.join("manifests");
        std::fs::create_dir_all(&root).expect("mkdir");
        std::fs::write(root.join("all.yaml"), MANIFESTS).expect("write");
        let pw = root.join("admin.password");
        std::fs::write(&pw, "x").expect("write");
        let mut perms = std::fs::metadata(&pw).expect("meta").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(&pw, perms).expect("chmod");
        root
    }

    /// Records of every managed resource of `set` as an apply leaves them (with a password).
    fn applied(set: &ManifestSet, store: &SledStore) {
        let mut resolver = Resolver::new(set);
        for m in set.managed() {
            let d = resolver.desired(&m.address, &|_| None).expect("desired");
            let mut rec = Record::new(m.address.clone(), 0);
            rec.spec_hash = d.spec.digest(store.digest_key());
            rec.spec = d.spec.clone();
            rec.connection = d.connection.clone();
            rec.status = Status::Ready;
            rec.generation = 1;
            rec.private.insert(
                "password".into(),
                Value::Secret(Sensitive::new("p".repeat(32))),
            );
            store.put(&rec).expect("put");
        }
    }

    /// A no-op plan without refresh decides from the records' heads: records whose secrets
    /// cannot even be decrypted (sealed under another key) still plan as unchanged, while
    /// opening one fails.
    #[tokio::test]
    async fn a_no_op_plan_without_refresh_decodes_no_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = manifests(dir.path());
        let set = crate::manifest::load(&root).expect("load");
        let graph = Graph::build(&set).expect("graph");

        // Records as an apply leaves them, in a store under one key...
        let first = SledStore::open(&dir.path().join("first")).expect("first");
        applied(&set, &first);
        let dump: Dump = first.dump().expect("dump");
        // ...copied sealed into a store with another key: nothing in them decrypts there.
        let other = SledStore::open(&dir.path().join("other")).expect("other");
        other.load(&dump).expect("load");
        let sealed = other.list_sealed().expect("list");
        assert!(matches!(other.unseal(&sealed[0]), Err(StateError::Decrypt)));

        let store: Arc<dyn StateStore> = Arc::new(other);
        let providers = crate::registry::providers(&crate::provider::Context {
            state_dir: dir.path().to_owned(),
        });
        let opts = PlanOptions {
            refresh: false,
            changed_only: false,
            targets: Vec::new(),
            parallelism: 4,
            refresh_timeout: None,
        };
        let plan = plan(&set, &graph, &store, &providers, &opts)
            .await
            .expect("plans without decoding a record");
        assert_eq!(plan.changes.len(), 2);
        assert!(plan.changes.iter().all(|c| c.action == Action::NoOp));
    }

    /// Answers every observation "in sync" and notes which resources were observed.
    struct Counting(std::sync::Mutex<Vec<Address>>);

    #[async_trait::async_trait]
    impl Provider for Counting {
        fn name(&self) -> &'static str {
            "postgres"
        }
        async fn observe(
            &self,
            desired: &Desired,
            recorded: Option<&Record>,
        ) -> Result<Option<crate::provider::Observed>, crate::provider::ProviderError> {
            if let Ok(mut seen) = self.0.lock() {
                seen.push(desired.address.clone());
            }
            // What tend has no record of does not exist yet.
            if recorded.is_none() {
                return Ok(None);
            }
            crate::provider::postgres::model::PostgresDatabase::converged(desired).map(Some)
        }
        async fn apply(
            &self,
            _journal: &dyn crate::provider::Journal,
            _desired: &Desired,
            _recorded: Option<&Record>,
        ) -> Result<crate::provider::Applied, crate::provider::ProviderError> {
            Err(crate::provider::ProviderError::permanent(
                "not in this test",
            ))
        }
        async fn destroy(&self, _recorded: &Record) -> Result<(), crate::provider::ProviderError> {
            Err(crate::provider::ProviderError::permanent(
                "not in this test",
            ))
        }
    }

    /// The daemon's file-event plan (issue 15 goal 2): only what changed, what has no record
    /// yet, and what depends on a change is refreshed; a full refresh observes everything.
    #[tokio::test]
    async fn changed_only_refreshes_what_changed_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = manifests(dir.path());
        let set = crate::manifest::load(&root).expect("load");
        let store = SledStore::open(&dir.path().join("state")).expect("state");
        applied(&set, &store);
        let store: Arc<dyn StateStore> = Arc::new(store);
        // `b` edited, `c` new, `a` as applied.
        let edited = MANIFESTS.replace("database: app_b", "database: app_b2")
            + "---\napiVersion: tend/v1\nkind: PostgresDatabase\nmetadata: {name: c}\nspec: {server: main, database: app_c, owner: app_c}\n";
        std::fs::write(root.join("all.yaml"), edited).expect("write");
        let set = crate::manifest::load(&root).expect("load");
        let graph = Graph::build(&set).expect("graph");
        let counting = Arc::new(Counting(std::sync::Mutex::new(Vec::new())));
        let providers: Vec<Arc<dyn Provider>> = vec![counting.clone()];
        let observed = |changed_only: bool| {
            let (set, graph, store, providers) = (&set, &graph, &store, &providers);
            let counting = counting.clone();
            async move {
                if let Ok(mut seen) = counting.0.lock() {
                    seen.clear();
                }
                let opts = PlanOptions {
                    changed_only,
                    parallelism: 2,
                    ..PlanOptions::default()
                };
                let plan = plan(set, graph, store, providers, &opts)
                    .await
                    .expect("plan");
                let mut seen: Vec<String> = counting
                    .0
                    .lock()
                    .map(|s| s.iter().map(ToString::to_string).collect())
                    .unwrap_or_default();
                seen.sort();
                (plan, seen)
            }
        };
        let (plan, seen) = observed(true).await;
        assert_eq!(seen, ["PostgresDatabase.b", "PostgresDatabase.c"]);
        let action = |a: &str| {
            plan.changes
                .iter()
                .find(|c| c.address.to_string() == a)
                .map(|c| c.action)
        };
        assert_eq!(action("PostgresDatabase.a"), Some(Action::NoOp));
        assert_eq!(action("PostgresDatabase.c"), Some(Action::Create));
        let (_, seen) = observed(false).await;
        assert_eq!(
            seen,
            [
                "PostgresDatabase.a",
                "PostgresDatabase.b",
                "PostgresDatabase.c"
            ]
        );
    }
}
