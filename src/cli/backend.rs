//! Where `plan`, `apply`, `status` and `runs` get their answers: the [`Backend`] trait, with
//! [`Local`] (this process opens the manifests and the sled store) and [`Daemon`] (a running
//! `tend daemon` answers on its control socket). The commands in `cli` are written once against
//! the trait; rendering, confirmation, flags and exit codes never depend on which one answered.
//!
//! **Invariant:** nothing here prints; a backend returns data (plans, runs, status) or an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::PlanFlags;
use crate::address::Address;
use crate::apply::{ApplyOptions, apply};
use crate::daemon::control::{
    self, ApplyReply, DaemonStatus, OutputValue, RevealOutputs, StatusReply,
};
use crate::engine::{PlanOptions, blocking, plan};
use crate::graph::Graph;
use crate::manifest::{self, LoadOptions, ManifestSet};
use crate::plan::{Plan, render};
use crate::provider::tenant::status::TenantStatus;
use crate::provider::{self, Provider};
use crate::state::{
    PgOpen, PgStore, PgTarget, Record, Run, SledStore, StateError, StateStore, Status, Trigger,
};

/// Where an apply's progress lines go, one line at a time.
pub type Progress = Arc<dyn Fn(String) + Send + Sync>;

/// What `tend status` shows, from either backend.
pub struct StatusView {
    /// The daemon's own account; `None` when no daemon answers (state was read directly).
    pub daemon: Option<DaemonStatus>,
    /// Records by status.
    pub resources: BTreeMap<String, usize>,
    /// The `Last run:` line's text.
    pub last_run: Option<String>,
    pub tenants: Vec<TenantStatus>,
    /// One line per record that is not ready (read from state only).
    pub unready: Vec<String>,
}

/// One interface to a plan, an apply, status and runs; see the module doc.
#[async_trait(?Send)]
pub trait Backend {
    /// A fresh plan. `saving`: the caller will [`Backend::save`] it.
    async fn plan(&mut self, flags: &PlanFlags, saving: bool) -> anyhow::Result<Plan>;
    /// Write a plan for a later `tend apply FILE`.
    async fn save(&mut self, plan: &Plan, path: &Path) -> anyhow::Result<()>;
    /// A plan written by [`Backend::save`]; an error if state or manifests changed since.
    async fn saved(&mut self, path: &Path) -> anyhow::Result<Plan>;
    /// Apply `plan` (already shown and approved); progress lines go to `progress`.
    async fn apply(
        &mut self,
        plan: &Plan,
        parallelism: usize,
        progress: Progress,
    ) -> anyhow::Result<Run>;
    async fn status(&mut self) -> anyhow::Result<StatusView>;
    /// The newest `limit` runs, newest first.
    async fn runs(&mut self, limit: usize) -> anyhow::Result<Vec<Run>>;
    async fn run(&mut self, id: &str) -> anyhow::Result<Option<Run>>;
    /// A recorded resource's outputs (`None`: not in state), sensitive ones masked unless
    /// `show_secrets` (then only `name`'s, when given). A revealed secret is logged, by key.
    async fn outputs(
        &mut self,
        address: &Address,
        name: Option<&str>,
        show_secrets: bool,
    ) -> anyhow::Result<Option<BTreeMap<String, OutputValue>>>;
    /// `tend import ADDR ID`: record the existing object as found (see `engine::import`).
    async fn import(
        &mut self,
        address: &Address,
        id: &str,
        deadline: Duration,
    ) -> anyhow::Result<Record>;
}

/// Which outputs a read reveals.
fn reveal_of(name: Option<&str>, show_secrets: bool) -> RevealOutputs<'_> {
    match (show_secrets, name) {
        (false, _) => RevealOutputs::None,
        (true, None) => RevealOutputs::All,
        (true, Some(n)) => RevealOutputs::Only(n),
    }
}

/// The daemon when one answers on `socket`, otherwise the state itself (opened for `access`).
pub async fn connect(
    manifests: &Path,
    load_opts: &LoadOptions,
    state: &StateAt,
    socket: &Path,
    access: Access,
) -> anyhow::Result<Box<dyn Backend>> {
    if control::answers(socket).await? {
        return Ok(Box::new(Daemon {
            socket: socket.to_owned(),
        }));
    }
    Ok(Box::new(Local::new(manifests, load_opts, state, access)))
}

/// Load manifests and the graph; every diagnostic in the error ([`manifest::LoadErrors`]).
pub fn load(dir: &Path, opts: &LoadOptions) -> anyhow::Result<(ManifestSet, Graph)> {
    let set = manifest::load_with(dir, opts)?;
    let graph = Graph::build(&set).map_err(manifest::LoadErrors)?;
    Ok((set, graph))
}

/// Where state lives: `--state DIR` (sled) or `--state postgres://…` (a schema on a
/// PostgreSQL server, with a local directory for the key file, the socket and work files).
#[derive(Clone, Debug)]
pub enum StateAt {
    Dir(PathBuf),
    Postgres {
        target: PgTarget,
        local: PathBuf,
        lease: Duration,
    },
}

impl StateAt {
    /// The directory for local files: the state directory itself, or the work directory.
    pub fn local_dir(&self) -> &Path {
        match self {
            StateAt::Dir(d) => d,
            StateAt::Postgres { local, .. } => local,
        }
    }

    /// What to pass as `--state` for it (a URL's password masked).
    pub fn arg_shown(&self) -> String {
        match self {
            StateAt::Dir(d) => d.display().to_string(),
            StateAt::Postgres { target, .. } => target.url_shown(),
        }
    }

    /// How messages name it (a URL's password masked).
    pub fn shown(&self) -> String {
        match self {
            StateAt::Dir(d) => d.display().to_string(),
            StateAt::Postgres { target, .. } => target.shown(),
        }
    }
}

/// Whether a command reads state or also writes it. A PostgreSQL state takes the writers' lock
/// for `Write` (naming `command` to anyone refused); a sled store is exclusive either way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write(&'static str),
}

pub fn open_store(at: &StateAt, access: Access) -> anyhow::Result<Arc<dyn StateStore>> {
    match at {
        StateAt::Dir(dir) => opened(SledStore::open(dir), &at.shown()),
        StateAt::Postgres { .. } => open_pg(at, access),
    }
}

/// The store for `tend state import`: created when missing (see [`SledStore::open_to_restore`]).
pub fn open_store_to_restore(at: &StateAt) -> anyhow::Result<Arc<dyn StateStore>> {
    match at {
        StateAt::Dir(dir) => opened(SledStore::open_to_restore(dir), &at.shown()),
        StateAt::Postgres { .. } => open_pg(at, Access::Write("tend state import")),
    }
}

fn open_pg(at: &StateAt, access: Access) -> anyhow::Result<Arc<dyn StateStore>> {
    let StateAt::Postgres {
        target,
        local,
        lease,
    } = at
    else {
        bail!("not a PostgreSQL state");
    };
    let writer = match access {
        Access::Read => None,
        Access::Write(command) => Some(command),
    };
    let store = PgStore::open(PgOpen {
        target,
        local_dir: local,
        writer,
        lease: *lease,
    });
    opened(store, &at.shown())
}

fn opened<S: StateStore + 'static>(
    store: Result<S, StateError>,
    shown: &str,
) -> anyhow::Result<Arc<dyn StateStore>> {
    match store {
        Ok(s) => Ok(Arc::new(s)),
        // These say what to do in full; a context would only repeat the directory.
        Err(
            e @ (StateError::Locked(_)
            | StateError::Lost { .. }
            | StateError::OtherLineage { .. }
            | StateError::Behind { .. }
            | StateError::Unreadable { .. }
            | StateError::Held { .. }
            | StateError::Migrated { .. }
            | StateError::Interrupted { .. }
            | StateError::Postgres { .. }),
        ) => bail!("{e}"),
        Err(e) => Err(e).with_context(|| format!("cannot open state in {shown}")),
    }
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

/// The manifests and their graph, loaded once per command.
struct Loaded {
    set: ManifestSet,
    graph: Graph,
}

/// This process holds the store: manifests and state are opened on first use.
pub struct Local {
    manifests: PathBuf,
    load_opts: LoadOptions,
    state: StateAt,
    access: Access,
    providers: Vec<Arc<dyn Provider>>,
    loaded: Option<Loaded>,
    store: Option<Arc<dyn StateStore>>,
}

impl Local {
    pub fn new(manifests: &Path, load_opts: &LoadOptions, state: &StateAt, access: Access) -> Self {
        Local {
            manifests: manifests.to_owned(),
            load_opts: load_opts.clone(),
            state: state.clone(),
            access,
            providers: crate::registry::providers(&provider::Context {
                state_dir: state.local_dir().to_owned(),
            }),
            loaded: None,
            store: None,
        }
    }

    /// The manifests and their graph, then the store: loaded first, as a plan needs them.
    fn open(&mut self) -> anyhow::Result<(&Loaded, Arc<dyn StateStore>)> {
        if self.loaded.is_none() {
            let (set, graph) = load(&self.manifests, &self.load_opts)?;
            self.loaded = Some(Loaded { set, graph });
        }
        let store = self.store()?;
        match &self.loaded {
            Some(l) => Ok((l, store)),
            None => bail!("manifests not loaded"),
        }
    }

    fn store(&mut self) -> anyhow::Result<Arc<dyn StateStore>> {
        if let Some(s) = &self.store {
            return Ok(Arc::clone(s));
        }
        let s = open_store(&self.state, self.access)?;
        self.store = Some(Arc::clone(&s));
        Ok(s)
    }
}

#[async_trait(?Send)]
impl Backend for Local {
    async fn plan(&mut self, flags: &PlanFlags, _saving: bool) -> anyhow::Result<Plan> {
        let providers = self.providers.clone();
        let (Loaded { set, graph }, store) = self.open()?;
        let opts = PlanOptions {
            refresh: flags.refresh,
            changed_only: false,
            targets: flags.targets.clone(),
            parallelism: flags.parallelism,
            refresh_timeout: flags.refresh_timeout,
        };
        plan(set, graph, &store, &providers, &opts).await
    }

    async fn save(&mut self, plan: &Plan, path: &Path) -> anyhow::Result<()> {
        let (Loaded { set, .. }, store) = self.open()?;
        let digest = set.digest.clone();
        let meta = blocking(&store, |s| s.meta()).await?;
        let file = PlanFile {
            format: 1,
            lineage: meta.lineage,
            serial: meta.serial,
            manifests_digest: digest,
            plan: plan.clone(),
        };
        write_private(path, &serde_json::to_vec_pretty(&file)?)
    }

    async fn saved(&mut self, path: &Path) -> anyhow::Result<Plan> {
        let (Loaded { set, .. }, store) = self.open()?;
        let digest = set.digest.clone();
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot read plan file {}", path.display()))?;
        let file: PlanFile = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a tend plan file", path.display()))?;
        let meta = blocking(&store, |s| s.meta()).await?;
        if file.lineage != meta.lineage || file.serial != meta.serial {
            bail!(
                "the saved plan is stale: state changed since it was made (run `tend plan --out` again)"
            );
        }
        if file.manifests_digest != digest {
            bail!(
                "the saved plan is stale: manifests changed since it was made (run `tend plan --out` again)"
            );
        }
        Ok(file.plan)
    }

    async fn apply(
        &mut self,
        plan: &Plan,
        parallelism: usize,
        progress: Progress,
    ) -> anyhow::Result<Run> {
        let providers = self.providers.clone();
        let (Loaded { set, graph }, store) = self.open()?;
        let opts = ApplyOptions {
            parallelism,
            trigger: Trigger::Cli,
            progress,
            heartbeat: Duration::from_secs(10),
            revision: None,
        };
        apply(set, graph, plan, &store, &providers, opts).await
    }

    async fn status(&mut self) -> anyhow::Result<StatusView> {
        let store = self.store()?;
        let records = blocking(&store, |s| s.list()).await?;
        let runs = blocking(&store, |s| s.runs(1)).await?;
        Ok(StatusView {
            daemon: None,
            resources: control::counts(&records),
            last_run: runs
                .first()
                .map(|r| format!("{} (exit {}) {}", r.id, r.exit_code, r.summary)),
            tenants: crate::provider::composition_statuses(&records),
            unready: records
                .iter()
                .filter(|r| r.status != Status::Ready)
                .map(|r| {
                    let class = r.error_class.map(|c| format!(" ({c})")).unwrap_or_default();
                    format!(
                        "{} {:?}{class}: {}",
                        r.address,
                        r.status,
                        r.last_error.as_deref().unwrap_or("")
                    )
                })
                .collect(),
        })
    }

    async fn runs(&mut self, limit: usize) -> anyhow::Result<Vec<Run>> {
        let store = self.store()?;
        Ok(blocking(&store, move |s| s.runs(limit)).await?)
    }

    async fn run(&mut self, id: &str) -> anyhow::Result<Option<Run>> {
        let store = self.store()?;
        let id = id.to_owned();
        Ok(blocking(&store, move |s| s.run(&id)).await?)
    }

    async fn import(
        &mut self,
        address: &Address,
        id: &str,
        deadline: Duration,
    ) -> anyhow::Result<Record> {
        let providers = self.providers.clone();
        let (Loaded { set, graph }, store) = self.open()?;
        crate::engine::import(set, graph, &store, &providers, address, id, deadline).await
    }

    async fn outputs(
        &mut self,
        address: &Address,
        name: Option<&str>,
        show_secrets: bool,
    ) -> anyhow::Result<Option<BTreeMap<String, OutputValue>>> {
        let store = self.store()?;
        let a = address.clone();
        let Some(record) = blocking(&store, move |s| s.get(&a)).await? else {
            return Ok(None);
        };
        let reveal = reveal_of(name, show_secrets);
        let outputs = control::outputs_of(&record, reveal);
        for key in control::revealed(&outputs, reveal) {
            tracing::info!(
                uid = control::euid(),
                pid = std::process::id(),
                address = %address,
                key = %key,
                "secret output read from state"
            );
        }
        Ok(Some(outputs))
    }
}

pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
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

/// A running daemon holds the store; every answer comes over its control socket.
pub struct Daemon {
    socket: PathBuf,
}

impl Daemon {
    /// One request; the body as `T`, `Ok(None)` for 404.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
    ) -> anyhow::Result<Option<T>> {
        let Some((status, body)) = control::request(&self.socket, method, path).await? else {
            bail!("the daemon went away");
        };
        match status {
            200 => Ok(Some(serde_json::from_slice(&body).with_context(|| {
                format!("the daemon's answer to {method} {path} is not understood")
            })?)),
            404 => Ok(None),
            _ => bail!(
                "the daemon answered {status}: {}",
                String::from_utf8_lossy(&body)
            ),
        }
    }

    async fn must<T: DeserializeOwned>(&self, method: &str, path: &str) -> anyhow::Result<T> {
        match self.call(method, path).await? {
            Some(t) => Ok(t),
            None => bail!("the daemon does not serve {method} {path}"),
        }
    }
}

#[async_trait(?Send)]
impl Backend for Daemon {
    async fn plan(&mut self, flags: &PlanFlags, saving: bool) -> anyhow::Result<Plan> {
        if saving || !flags.targets.is_empty() || !flags.refresh {
            bail!(
                "a daemon holds the state: --out, --target and --refresh=false are not available through it"
            );
        }
        let doc: serde_json::Value = self.must("POST", "/v1/plan").await?;
        render::from_json(&doc).context("the daemon's plan is not a tend plan JSON")
    }

    async fn save(&mut self, _: &Plan, _: &Path) -> anyhow::Result<()> {
        bail!("a daemon holds the state: --out is not available through it")
    }

    async fn saved(&mut self, path: &Path) -> anyhow::Result<Plan> {
        bail!(
            "a daemon holds the state: a saved plan ({}) cannot be applied through it; run `tend apply` to let the daemon plan and apply",
            path.display()
        )
    }

    async fn apply(&mut self, _plan: &Plan, _: usize, progress: Progress) -> anyhow::Result<Run> {
        let reply: ApplyReply = self.must("POST", "/v1/apply").await?;
        for line in reply.progress {
            progress(line);
        }
        match reply.run {
            Some(run) => Ok(run),
            None if !reply.plan.errors.is_empty() => bail!(
                "the daemon did not apply: its plan has errors:\n{}",
                reply
                    .plan
                    .errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
            None if !reply.plan.has_changes() => {
                bail!("the daemon did not apply: it found nothing to change any more")
            }
            None => bail!(
                "the daemon stopped during the apply and cancelled it (its resources are refreshed at the next start)"
            ),
        }
    }

    async fn status(&mut self) -> anyhow::Result<StatusView> {
        let s: StatusReply = self.must("GET", "/v1/status").await?;
        Ok(StatusView {
            last_run: s.daemon.last_run.clone(),
            daemon: Some(s.daemon),
            resources: s.resources,
            tenants: s.tenants,
            unready: Vec::new(),
        })
    }

    async fn runs(&mut self, limit: usize) -> anyhow::Result<Vec<Run>> {
        self.must("GET", &format!("/v1/runs?limit={limit}")).await
    }

    async fn run(&mut self, id: &str) -> anyhow::Result<Option<Run>> {
        self.call("GET", &format!("/v1/runs/{id}")).await
    }

    async fn import(
        &mut self,
        address: &Address,
        _id: &str,
        _deadline: Duration,
    ) -> anyhow::Result<Record> {
        bail!(
            "a daemon holds this state: stop it (`systemctl stop tend`), run `tend import {address} …`, and start it again"
        )
    }

    async fn outputs(
        &mut self,
        address: &Address,
        name: Option<&str>,
        show_secrets: bool,
    ) -> anyhow::Result<Option<BTreeMap<String, OutputValue>>> {
        let mut path = format!("/v1/outputs/{address}");
        if show_secrets {
            path.push_str("?show_secrets=1");
            if let Some(n) = name {
                path.push_str("&name=");
                path.extend(percent_encoding::utf8_percent_encode(
                    n,
                    percent_encoding::NON_ALPHANUMERIC,
                ));
            }
        }
        self.call("GET", &path).await
    }
}
