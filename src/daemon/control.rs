//! The daemon's control API: HTTP over a Unix socket (mode 0600, and a peer of another user is
//! refused), for `tend status`, `runs`, `plan` and `apply`. Reads (status, resources, runs) are
//! answered from shared state; plan and apply are requests into the daemon's event loop, so the
//! loop stays the only writer. Plans travel as data (the plan JSON of `tend plan --json`), never
//! as rendered text: the CLI renders them, with colour on a terminal.
//!
//! Also [`answers`] and [`request`], the client the CLI uses: it trusts a socket only when the
//! file and the serving process (SO_PEERCRED) belong to the same user or root. Must not touch
//! manifests or providers itself.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::extract::{ConnectInfo, Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::Event;
use crate::engine::blocking;
use crate::plan::Plan;
use crate::plan::render;
use crate::provider::ErrorClass;
use crate::state::{Record, Run, StateStore};

/// What the daemon is doing, kept up to date by the event loop.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    pub manifests: String,
    /// Digest of the manifests last loaded successfully.
    pub manifests_digest: Option<String>,
    /// With `--source git`: the commit last loaded.
    pub revision: Option<String>,
    /// `starting`, `in sync`, `applying`, `frozen`, `degraded`, `stalled`,
    /// `waiting for approval`.
    pub phase: String,
    /// One line, the same as systemd's `STATUS=`.
    pub summary: String,
    /// Rendered diagnostics of the last failed load.
    pub load_errors: Vec<String>,
    /// Resources whose manifests were removed and that are kept (no `--prune`).
    pub orphans: Vec<String>,
    /// Deletes held back until approved (`--max-prune`).
    pub held: Vec<String>,
    pub last_run: Option<String>,
    /// Unix ms.
    pub last_reload_at: Option<u64>,
    pub last_good_reload_at: Option<u64>,
    /// When failed resources are retried next (Unix ms); none while only permanent failures
    /// remain.
    pub next_retry_at: Option<u64>,
    /// Failed attempts in a row.
    pub failures: u32,
    /// Resources whose last action failed, with the error's class and their next retry.
    #[serde(default)]
    pub failed: Vec<FailedResource>,
    /// Resources whose last refresh had no answer within its deadline.
    #[serde(default)]
    pub stuck: Vec<String>,
    /// With a state shared by several daemons: `leader` or `standby` (empty: the only one).
    #[serde(default)]
    pub role: String,
    /// Who leads: `this daemon`, or the holder of the state's lock as it names itself.
    #[serde(default)]
    pub leader: Option<String>,
    /// Resources whose last plan found drift that no apply has corrected since (e.g. waiting
    /// for `--approve manual`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drifted: Vec<String>,
    /// What each action in progress last said (a provider's own line, e.g. `waiting for 1/2
    /// healthy allocations (…)`), by address; empty between applies.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub activity: std::collections::BTreeMap<String, String>,
    /// The last load's graph: each address with its direct dependencies, dependencies first
    /// (for the status page; not part of the API).
    #[serde(skip)]
    pub graph: Vec<(String, Vec<String>)>,
}

/// A failed resource, as `tend status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedResource {
    pub address: String,
    pub error: String,
    /// `transient`, `conflict` or `permanent` (absent for a failure recorded before classes
    /// were, which is retried like a transient one).
    pub error_class: Option<ErrorClass>,
    /// Unix ms; none for a permanent failure, which waits for a change to its inputs (or
    /// `tend apply` / SIGHUP).
    pub next_retry_at: Option<u64>,
}

/// The outcome of an apply requested by a client (`POST /v1/apply`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplyReply {
    /// The plan the daemon made and acted on, as the plan JSON.
    #[serde(with = "render::as_json")]
    pub plan: Plan,
    /// The apply's progress lines, in order.
    pub progress: Vec<String>,
    /// The run recorded; `None` when nothing was applied (the plan had errors or no changes,
    /// or the daemon stopped first).
    pub run: Option<Run>,
}

/// What the event loop fills in while it applies for a client.
#[derive(Debug, Default)]
pub struct Echo {
    progress: Mutex<Vec<String>>,
    run: Mutex<Option<Run>>,
}

impl Echo {
    /// A progress line of the apply.
    pub fn line(&self, line: &str) {
        if let Ok(mut p) = self.progress.lock() {
            p.push(line.to_owned());
        }
    }

    /// The run the apply recorded.
    pub fn run(&self, run: &Run) {
        if let Ok(mut r) = self.run.lock() {
            *r = Some(run.clone());
        }
    }

    /// The reply for the client that asked.
    pub fn reply(&self, plan: Plan) -> ApplyReply {
        ApplyReply {
            plan,
            progress: self.progress.lock().map(|p| p.clone()).unwrap_or_default(),
            run: self.run.lock().ok().and_then(|r| r.clone()),
        }
    }
}

/// A request into the event loop.
#[derive(Debug)]
pub enum Control {
    Plan(oneshot::Sender<Result<Plan, String>>),
    Apply(oneshot::Sender<Result<ApplyReply, String>>),
}

#[derive(Clone)]
struct Ctx {
    status: Arc<Mutex<DaemonStatus>>,
    store: Arc<dyn StateStore>,
    events: mpsc::UnboundedSender<Event>,
    uid: u32,
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Bind the socket: refuse a path owned by another user, replace a stale socket of ours,
/// restrict it to 0600, and serve until the returned task is aborted.
pub fn serve(
    path: &Path,
    status: Arc<Mutex<DaemonStatus>>,
    store: Arc<dyn StateStore>,
    events: mpsc::UnboundedSender<Event>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let uid = euid();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.uid() != uid {
            anyhow::bail!(
                "refusing to use the control socket {}: it is owned by uid {}, not by this user (uid {uid})",
                path.display(),
                meta.uid()
            );
        }
        std::fs::remove_file(path)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let ctx = Ctx {
        status,
        store,
        events,
        uid,
    };
    let app = Router::new()
        .route("/v1/status", get(get_status))
        .route("/v1/resources", get(get_resources))
        .route("/v1/runs", get(get_runs))
        .route("/v1/runs/{id}", get(get_run))
        .route("/v1/outputs/{*address}", get(get_outputs))
        .route("/v1/plan", post(post_plan))
        .route("/v1/apply", post(post_apply))
        .with_state(ctx);
    let app = app.into_make_service_with_connect_info::<PeerUid>();
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "control socket stopped");
        }
    }))
}

type Reply<T> = Result<Json<T>, (StatusCode, String)>;

/// The uid (and pid, when known) of the process on the other end of the socket (SO_PEERCRED).
#[derive(Clone, Copy, Debug)]
pub struct PeerUid(Option<u32>, Option<i32>);

impl
    axum::extract::connect_info::Connected<
        axum::serve::IncomingStream<'_, tokio::net::UnixListener>,
    > for PeerUid
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, tokio::net::UnixListener>) -> Self {
        let cred = stream.io().peer_cred().ok();
        PeerUid(cred.map(|c| c.uid()), cred.and_then(|c| c.pid()))
    }
}

fn check_peer(ctx: &Ctx, info: &PeerUid) -> Result<(), (StatusCode, String)> {
    match info.0 {
        Some(uid) if uid == ctx.uid || uid == 0 => Ok(()),
        Some(uid) => Err((
            StatusCode::FORBIDDEN,
            format!("uid {uid} may not use this daemon"),
        )),
        None => Err((
            StatusCode::FORBIDDEN,
            "cannot tell who is asking".to_owned(),
        )),
    }
}

fn internal(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Status plus resource counts by state status.
#[derive(Serialize, Deserialize)]
pub struct StatusReply {
    #[serde(flatten)]
    pub daemon: DaemonStatus,
    pub resources: BTreeMap<String, usize>,
    #[serde(default)]
    pub tenants: Vec<crate::provider::tenant::status::TenantStatus>,
}

async fn get_status(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
) -> Reply<StatusReply> {
    check_peer(&ctx, &info)?;
    let records = blocking(&ctx.store, |s| s.list()).await.map_err(internal)?;
    let resources = counts(&records);
    let tenants = crate::provider::composition_statuses(&records);
    let daemon = ctx.status.lock().map_err(internal)?.clone();
    Ok(Json(StatusReply {
        daemon,
        resources,
        tenants,
    }))
}

/// Records by status (`ready`, `failed`, `applying`), as `tend status` shows them.
pub fn counts(records: &[Record]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for r in records {
        *counts.entry(r.status.as_str().to_owned()).or_insert(0) += 1;
    }
    counts
}

/// One resource as the control API lists it (no spec, no secrets).
#[derive(Serialize, Deserialize)]
pub struct ResourceBrief {
    pub address: String,
    pub status: String,
    pub generation: u64,
    pub last_error: Option<String>,
    #[serde(default)]
    pub error_class: Option<ErrorClass>,
    pub updated_at: u64,
}

async fn get_resources(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
) -> Reply<Vec<ResourceBrief>> {
    check_peer(&ctx, &info)?;
    let records = blocking(&ctx.store, |s| s.list()).await.map_err(internal)?;
    Ok(Json(
        records
            .into_iter()
            .map(|r| ResourceBrief {
                address: r.address.to_string(),
                status: r.status.as_str().to_owned(),
                generation: r.generation,
                last_error: r.last_error,
                error_class: r.error_class,
                updated_at: r.updated_at,
            })
            .collect(),
    ))
}

/// `?resource=ADDR&status=ok|failed&limit=N`.
#[derive(Deserialize, Serialize, Default)]
pub struct RunsQuery {
    pub resource: Option<String>,
    pub status: Option<String>,
    pub limit: Option<usize>,
}

/// Filter runs, newest first (shared with the CLI's fallback when no daemon runs).
pub fn filter_runs(runs: Vec<Run>, q: &RunsQuery) -> Vec<Run> {
    let limit = q.limit.unwrap_or(20);
    runs.into_iter()
        .filter(|r| {
            q.resource
                .as_ref()
                .is_none_or(|a| r.results.iter().any(|x| &x.address == a))
        })
        .filter(|r| match q.status.as_deref() {
            Some("ok") => r.exit_code == 0,
            Some("failed") => r.exit_code != 0,
            _ => true,
        })
        .take(limit)
        .collect()
}

async fn get_runs(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
    Query(q): Query<RunsQuery>,
) -> Reply<Vec<Run>> {
    check_peer(&ctx, &info)?;
    let runs = blocking(&ctx.store, |s| s.runs(usize::MAX))
        .await
        .map_err(internal)?;
    Ok(Json(filter_runs(runs, &q)))
}

async fn get_run(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
    UrlPath(id): UrlPath<String>,
) -> Reply<Run> {
    check_peer(&ctx, &info)?;
    let key = id.clone();
    match blocking(&ctx.store, move |s| s.run(&key))
        .await
        .map_err(internal)?
    {
        Some(r) => Ok(Json(r)),
        None => Err((StatusCode::NOT_FOUND, format!("no run {id}"))),
    }
}

/// One output of a resource, as `tend output` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputValue {
    /// The value; `"(sensitive)"` for a sensitive one unless secrets were asked for.
    pub value: serde_json::Value,
    pub sensitive: bool,
}

/// `?show_secrets=1&name=KEY`.
#[derive(Deserialize, Serialize, Default)]
pub struct OutputsQuery {
    #[serde(default)]
    pub show_secrets: Option<u8>,
    /// Reveal only this output (the others stay masked).
    #[serde(default)]
    pub name: Option<String>,
}

/// Which sensitive outputs a read reveals.
#[derive(Clone, Copy, Debug)]
pub enum RevealOutputs<'a> {
    None,
    All,
    Only(&'a str),
}

/// A record's outputs, sensitive ones masked unless revealed (shared with the CLI's local
/// backend). Sensitive: the kind's schema says so, or the value holds a secret.
pub fn outputs_of(record: &Record, reveal: RevealOutputs<'_>) -> BTreeMap<String, OutputValue> {
    let schema = record.address.kind.model().schema();
    record
        .outputs
        .iter()
        .map(|(k, v)| {
            let sensitive =
                v.is_sensitive() || schema.outputs.iter().any(|o| o.name == k && o.sensitive);
            let shown = match reveal {
                RevealOutputs::None => false,
                RevealOutputs::All => true,
                RevealOutputs::Only(name) => name == k,
            };
            let value = match (sensitive, shown) {
                (true, false) => serde_json::Value::String(crate::value::SENSITIVE.to_owned()),
                (true, true) => v.to_json(crate::value::Reveal::Yes),
                (false, _) => v.to_json(crate::value::Reveal::No),
            };
            (k.clone(), OutputValue { value, sensitive })
        })
        .collect()
}

async fn get_outputs(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
    UrlPath(address): UrlPath<String>,
    Query(q): Query<OutputsQuery>,
) -> Reply<BTreeMap<String, OutputValue>> {
    check_peer(&ctx, &info)?;
    let addr: crate::address::Address = address
        .parse()
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{address}: {e}")))?;
    let key = addr.clone();
    let Some(record) = blocking(&ctx.store, move |s| s.get(&key))
        .await
        .map_err(internal)?
    else {
        return Err((StatusCode::NOT_FOUND, format!("{addr} is not in state")));
    };
    let reveal = match (q.show_secrets.unwrap_or(0) != 0, q.name.as_deref()) {
        (false, _) => RevealOutputs::None,
        (true, None) => RevealOutputs::All,
        (true, Some(name)) => RevealOutputs::Only(name),
    };
    let outputs = outputs_of(&record, reveal);
    for key in revealed(&outputs, reveal) {
        tracing::info!(
            uid = info.0,
            pid = info.1,
            address = %addr,
            key = %key,
            "secret output read through the control socket"
        );
    }
    Ok(Json(outputs))
}

/// The sensitive outputs a read revealed, for the audit log (names only, never values).
pub fn revealed<'a>(
    outputs: &'a BTreeMap<String, OutputValue>,
    reveal: RevealOutputs<'a>,
) -> impl Iterator<Item = &'a str> {
    outputs
        .iter()
        .filter(move |(k, o)| {
            o.sensitive
                && match reveal {
                    RevealOutputs::None => false,
                    RevealOutputs::All => true,
                    RevealOutputs::Only(name) => name == k.as_str(),
                }
        })
        .map(|(k, _)| k.as_str())
}

/// Hand a request to the event loop and wait for its answer.
async fn ask<T>(
    ctx: &Ctx,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> Control,
) -> Result<T, (StatusCode, String)> {
    let stopping = || {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is stopping".to_owned(),
        )
    };
    let (tx, rx) = oneshot::channel();
    ctx.events
        .send(Event::Control(make(tx)))
        .map_err(|_| stopping())?;
    match rx.await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(e)) => Err((StatusCode::UNPROCESSABLE_ENTITY, e)),
        Err(_) => Err(stopping()),
    }
}

/// A fresh plan as the plan JSON, exactly what `tend plan --json` prints.
async fn post_plan(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
) -> Reply<serde_json::Value> {
    check_peer(&ctx, &info)?;
    let plan = ask(&ctx, Control::Plan).await?;
    Ok(Json(render::json(&plan)))
}

async fn post_apply(
    State(ctx): State<Ctx>,
    ConnectInfo(info): ConnectInfo<PeerUid>,
) -> Reply<ApplyReply> {
    check_peer(&ctx, &info)?;
    ask(&ctx, Control::Apply).await.map(Json)
}

/// Whether the CLI may trust a socket file or a peer owned by `uid`: only one of this user
/// (`me`, the effective uid) or root. Anyone else could answer with a forged plan or status,
/// or read what the CLI sends.
pub fn trusted_uid(uid: u32, me: u32) -> bool {
    uid == me || uid == 0
}

/// [`trusted_uid`] as an error naming `what` (the socket file, or the process serving it).
pub fn check_uid(socket: &Path, what: &str, uid: u32, me: u32) -> anyhow::Result<()> {
    if trusted_uid(uid, me) {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to trust the control socket {}: {what} uid {uid}, not this user (uid {me}) \
         or root; remove it or point --socket elsewhere",
        socket.display()
    )
}

/// A connection to the daemon, `Ok(None)` when none answers on the socket (no file, or a
/// stale one nobody listens on). The socket file must belong to this user or root, and so
/// must the process that accepts (SO_PEERCRED).
async fn connect(socket: &Path) -> anyhow::Result<Option<tokio::net::UnixStream>> {
    let me = euid();
    match std::fs::metadata(socket) {
        Ok(meta) => check_uid(socket, "its file is owned by", meta.uid(), me)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot reach the daemon at {}: {e}", socket.display()),
    }
    match tokio::net::UnixStream::connect(socket).await {
        Ok(s) => {
            let peer = s.peer_cred().map_err(|e| {
                anyhow::anyhow!(
                    "cannot tell who serves the control socket {}: {e}",
                    socket.display()
                )
            })?;
            check_uid(socket, "it is served by", peer.uid(), me)?;
            Ok(Some(s))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(None)
        }
        Err(e) => anyhow::bail!("cannot reach the daemon at {}: {e}", socket.display()),
    }
}

/// Whether a daemon answers on the socket.
pub async fn answers(socket: &Path) -> anyhow::Result<bool> {
    Ok(connect(socket).await?.is_some())
}

/// The CLI's side: one HTTP request over the socket. `Ok(None)` when no daemon answers there.
pub async fn request(
    socket: &Path,
    method: &str,
    path: &str,
) -> anyhow::Result<Option<(u16, bytes::Bytes)>> {
    use http_body_util::{BodyExt, Empty};
    let Some(stream) = connect(socket).await? else {
        return Ok(None);
    };
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "tend")
        .body(Empty::<bytes::Bytes>::new())?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(Some((status, body)))
}

/// The default socket path.
pub fn default_socket(state: &Path) -> PathBuf {
    state.join("tend.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_user_or_root_is_trusted() {
        assert!(trusted_uid(1000, 1000));
        assert!(trusted_uid(0, 1000));
        assert!(!trusted_uid(1001, 1000));
        let err = check_uid(Path::new("/s.sock"), "its file is owned by", 1001, 1000)
            .expect_err("another user");
        assert!(err.to_string().contains("uid 1001"), "{err}");
        assert!(err.to_string().contains("refusing to trust"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_of_this_user_is_trusted_and_a_missing_one_answers_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tend.sock");
        assert!(!answers(&path).await.expect("no socket"));
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        assert!(answers(&path).await.expect("our own socket is trusted"));
    }

    #[tokio::test]
    async fn a_socket_file_of_another_user_is_refused() {
        if euid() != 0 {
            return; // chown to another user needs root; the pure check is tested above
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tend.sock");
        let _listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path; chown has no other preconditions.
        assert_eq!(unsafe { libc::chown(c_path.as_ptr(), 4242, 4242) }, 0);
        let err = answers(&path).await.expect_err("refused");
        assert!(err.to_string().contains("owned by uid 4242"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_served_by_another_user_is_refused() {
        use std::os::fd::AsRawFd;
        if euid() != 0 {
            return; // serving as another user needs root; the pure check is tested above
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tend.sock");
        // Bound by us (the file is ours); a child that became uid 4242 listens on it again,
        // and the kernel hands connecting clients the credentials of the last listen().
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let fd = listener.as_raw_fd();
        // SAFETY: the child only makes async-signal-safe system calls, then waits to be killed.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork");
        if child == 0 {
            // SAFETY: plain system calls on our own descriptor.
            unsafe {
                if libc::setgid(4242) != 0 || libc::setuid(4242) != 0 || libc::listen(fd, 8) != 0 {
                    libc::_exit(1);
                }
                loop {
                    libc::pause();
                }
            }
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let refused = loop {
            match answers(&path).await {
                Err(e) => break Some(e),
                Ok(_) if std::time::Instant::now() > deadline => break None,
                Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        // SAFETY: our own child.
        unsafe {
            libc::kill(child, libc::SIGKILL);
            libc::waitpid(child, std::ptr::null_mut(), 0);
        }
        let err = refused.expect("the other user's listener is refused");
        assert!(err.to_string().contains("served by uid 4242"), "{err}");
    }
}
