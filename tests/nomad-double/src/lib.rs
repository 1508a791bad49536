//! A Nomad HTTP API double: an axum server on 127.0.0.1 (its own thread, its own tokio
//! runtime) that answers the part of Nomad's HTTP API tend uses, the way Nomad answers it.
//! Nomad cannot be installed on our machines, so tend's Nomad driver is tested against this.
//!
//! It follows `shared/reference/nomad-http-api.md` field for field:
//! - §1 conventions: PascalCase JSON, keys matched case-insensitively on input as Go does,
//!   plain-text errors with Nomad's status codes (400 agent checks, 403 `Permission denied` /
//!   `ACL token not found`, 404 `job not found`, 405 `Invalid method`, 500 for everything the
//!   servers refuse), `X-Nomad-Index` (never 0 on writes), `X-Nomad-KnownLeader` /
//!   `X-Nomad-LastContact` on reads, blocking queries (`?index=&wait=`), `?pretty`,
//!   `X-Nomad-Token` or `Authorization: Bearer`, `?namespace=` / `?region=` (an unknown region
//!   answers `No path to region`, an unknown namespace the admission error of §7).
//! - §2 register (`PUT|POST /v1/jobs`, `/v1/job/:id`): Go decode errors and the agent's 400
//!   checks, the defaults of §2.3 (the read-back of §8), the validation of §2.4 rendered as
//!   go-multierror text with status 500, check-and-set of §2.2 with its exact messages,
//!   `validateJobUpdate`, `PreserveCounts`, `Stop`.
//! - §3 `SpecChanged`: an identical job keeps Version / JobModifyIndex / ModifyIndex but still
//!   gets an evaluation; a changed one gets Version + 1 and a new JobModifyIndex; stopping
//!   rewrites the job (Version + 1).
//! - §4 read, list stubs, summary, allocations, evaluations; §5 plan with a Diff shaped like
//!   `structs/diff.go` (contextual task fields, primitive flattening such as `Env[KEY]`,
//!   object and set diffs) and the annotations of `scheduler/annotate.go`; §6 deregister and
//!   purge; §7 the status codes; the Variables section (CAS and its 409 bodies, path rules,
//!   size limit, 204 deletes, the metadata-only list).
//!
//! TLS (`start_tls`): HTTPS on the same port scheme as Nomad's `tls { http = true }`, with a
//! CA, a server certificate and a client certificate minted at start (rcgen, nothing on disk);
//! `RequireClientCert` is `verify_https_client = true`: a handshake without a certificate signed
//! by that CA is refused, before any HTTP request. Each handshake is recorded
//! ([`NomadDouble::handshakes`]).
//!
//! What it does not do: there is no scheduler, no client and no node. The evaluation a write
//! creates is "processed" synchronously, one raft index later, by a small reconciler: it
//! places `Count` allocations per group (ClientStatus as configured, `running` by default),
//! ignores, updates in place or replaces them (destructive change) on a new version, stops
//! them when the job is stopped, scaled down or purged, and reports placement failures when a
//! test asks for them. Nothing runs; there are no canaries, reschedules, garbage
//! collection, HCL, Sentinel, Consul/Vault/Connect hooks, multiregion, dispatch, periodic
//! launches, pagination or `filter` expressions. Deployments (`deploy`) are kept for service
//! jobs, with health as a test sets it. Blocks the reference does not default
//! (services, networks, volumes, ...) are stored as sent (empty → null) and diffed
//! generically.
//!
//! ACLs (`acl`): a double started with a token has ACLs on, with that token as its management
//! token; tests add policies (namespace capabilities, the `policy` shorthand, Variables path
//! rules), roles and client tokens, and every job and variable endpoint checks the capability
//! Nomad's endpoint checks (`read-job`, `submit-job`/`register-job`, `submit-job`/`plan-job`,
//! `submit-job`/`purge-job`/`deregister-job`, Variables `read`/`write`/`destroy`/`list`), so a
//! token with only `submit-job` cannot write Variables. `GET /v1/acl/token/self`,
//! `/v1/acl/policy/:name` (with `RulesJSON`) and `/v1/acl/role/:id` answer as Nomad does, and
//! 400 `ACL support disabled` without ACLs. Which endpoints answer `ACL token not found` for a
//! wrong token is unconfirmed in the reference; here: job endpoints say `Permission denied`,
//! variable and ACL endpoints `ACL token not found`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value};

mod acl;
mod cluster;
mod decode;
mod deploy;
mod diff;
mod go;
mod http;
mod tls;
mod validate;

pub use acl::Policy;
use cluster::{Alloc, Nomad};
use http::handle;
use tls::{Pki, TlsListener};

type Obj = Map<String, Value>;

/// The agent's region (a default agent).
const AGENT_REGION: &str = "global";
/// One second in nanoseconds (Go durations are int64 nanoseconds).
const SEC: i64 = 1_000_000_000;
const MAX_VARIABLE_SIZE: usize = 64 * 1024;
const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
const NODE_ID: &str = "5e4c1b5a-0d1f-4d59-9a3e-6b7d3f0c2a11";
const NODE_NAME: &str = "nomad-double-client";
/// The fields `SpecChanged` copies from the stored job before comparing (§3).
const SERVER_FIELDS: [&str; 8] = [
    "Status",
    "StatusDescription",
    "Stable",
    "Version",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "SubmitTime",
];

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------

/// How the allocations of a deployment report health (`deploy`): healthy once they have run
/// this long, unhealthy after this long, or never (the deployment fails at its group's
/// `ProgressDeadline`). A failed allocation is unhealthy whatever is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeploymentHealth {
    Healthy(std::time::Duration),
    Unhealthy(std::time::Duration),
    Never,
}

/// One request the double answered, in arrival order.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The decoded path, without the query.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The token as Nomad parses it (`X-Nomad-Token`, else `Authorization: Bearer`, else a
    /// register body's `SecretID`).
    pub token: Option<String>,
    /// The body as JSON; a non-JSON body as a JSON string; no body as null.
    pub body: Value,
    /// The status the double answered with.
    pub status: u16,
}

/// How a TLS double treats clients (Nomad's `tls { http = true }` block).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Server authentication only (`verify_https_client = false`).
    ServerOnly,
    /// Mutual TLS (`verify_https_client = true`): the client must present a certificate signed
    /// by the double's CA.
    RequireClientCert,
}

/// PEM material a TLS double was started with: its CA, and a client certificate + key signed
/// by that CA (what `nomad tls cert create -cli` gives an operator).
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    /// The CA certificate (what `ca_cert` / `NOMAD_CACERT` holds).
    pub ca_cert: String,
    /// A client certificate signed by the CA (`client_cert` / `NOMAD_CLIENT_CERT`).
    pub client_cert: String,
    /// The client certificate's private key, PKCS#8 (`client_key` / `NOMAD_CLIENT_KEY`).
    pub client_key: String,
}

impl TlsMaterial {
    /// A fresh CA unrelated to any double, with a client certificate + key signed by it.
    pub fn unrelated() -> TlsMaterial {
        Pki::new().material()
    }
}

/// One TLS handshake a TLS double saw, as its server side saw it.
#[derive(Clone, Debug)]
pub struct Handshake {
    /// Whether it completed.
    pub ok: bool,
    /// Whether the client presented a certificate the server accepted.
    pub client_cert: bool,
    /// The server's error for a failed one (`received fatal alert: UnknownCA`, ...).
    pub error: Option<String>,
}

/// A running Nomad double. Dropping it (or [`NomadDouble::stop`]) shuts the server down.
pub struct NomadDouble {
    addr: SocketAddr,
    tls: bool,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NomadDouble {
    /// A double without ACLs; returns once it listens.
    pub fn start() -> NomadDouble {
        Self::launch(None, None)
    }

    /// A double with ACLs on: every request needs exactly this token.
    pub fn start_with_token(token: &str) -> NomadDouble {
        Self::launch(Some(token.to_owned()), None)
    }

    /// A double without ACLs serving HTTPS only, with a CA, server certificate (for
    /// `localhost` and `127.0.0.1`) and client certificate minted for it; returns once it
    /// listens. [`NomadDouble::address`] is then `https://127.0.0.1:PORT`.
    pub fn start_tls(mode: TlsMode) -> (NomadDouble, TlsMaterial) {
        let pki = Pki::new();
        let config = pki.server_config(mode);
        (Self::launch(None, Some(config)), pki.material())
    }

    fn launch(token: Option<String>, tls: Option<Arc<rustls::ServerConfig>>) -> NomadDouble {
        let shared = Arc::new(Shared {
            state: Mutex::new(Nomad::new(token)),
            handshakes: Mutex::new(Vec::new()),
        });
        let is_tls = tls.is_some();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("nomad-double".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("nomad double: tokio runtime");
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("nomad double: bind 127.0.0.1:0");
                    let addr = listener.local_addr().expect("nomad double: local addr");
                    let app = axum::Router::new()
                        .fallback(handle)
                        .with_state(app_state.clone());
                    addr_tx.send(addr).expect("nomad double: report address");
                    let serving = async move {
                        match tls {
                            None => axum::serve(listener, app).await,
                            Some(config) => {
                                let listener = TlsListener::new(listener, config, app_state);
                                axum::serve(listener, app).await
                            }
                        }
                    };
                    tokio::select! {
                        served = serving => served.expect("nomad double: serve"),
                        _ = stop_rx => {}
                    }
                });
            })
            .expect("nomad double: spawn thread");
        let addr = addr_rx.recv().expect("nomad double: server thread died");
        NomadDouble {
            addr,
            tls: is_tls,
            shared,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` for a double from [`NomadDouble::start_tls`]).
    pub fn address(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Every TLS handshake so far, in completion order (none for a plain-HTTP double).
    pub fn handshakes(&self) -> Vec<Handshake> {
        self.shared
            .handshakes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The stored (canonicalised) job, as `GET /v1/job/:id` would answer.
    pub fn job(&self, namespace: &str, id: &str) -> Option<Value> {
        self.shared.lock().jobs.get(&key(namespace, id)).cloned()
    }

    /// The full variable, Items included.
    pub fn variable(&self, namespace: &str, path: &str) -> Option<Value> {
        self.shared
            .lock()
            .vars
            .get(&key(namespace, path))
            .map(|v| v.to_json(true))
    }

    /// Every request answered so far.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().log.clone()
    }

    /// How many requests had this method and exactly this (decoded) path.
    pub fn count(&self, method: &str, path: &str) -> usize {
        self.shared
            .lock()
            .log
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.path == path)
            .count()
    }

    /// Evaluations created by job writes so far (registers, identical ones included, stops,
    /// purges). Blocked evaluations the simulated scheduler adds are not counted.
    pub fn evaluations(&self) -> usize {
        self.shared.lock().evaluations
    }

    /// The simulated allocations of a job (AllocListStub JSON), terminal ones included.
    pub fn allocations(&self, namespace: &str, id: &str) -> Vec<Value> {
        let st = self.shared.lock();
        st.allocs
            .iter()
            .filter(|a| a.namespace == namespace && a.job_id == id)
            .map(Alloc::stub)
            .collect()
    }

    /// Changes a stored job out of band, as if another user registered the edited job: it is
    /// canonicalised and validated again (panics if Nomad would refuse it), a changed spec
    /// bumps Version / JobModifyIndex, and an evaluation is created.
    pub fn edit_job(&self, namespace: &str, id: &str, f: impl FnOnce(&mut Value)) {
        let mut job = self
            .job(namespace, id)
            .unwrap_or_else(|| panic!("edit_job: no job {id:?} in namespace {namespace:?}"));
        f(&mut job);
        let mut st = self.shared.lock();
        if let Err(e) = st.register_out_of_band(namespace, id, job) {
            panic!("edit_job: Nomad would refuse the edited job: {e}");
        }
    }

    /// Purges a job out of band (`nomad job stop -purge`): evaluation, allocations stopped.
    pub fn purge_job(&self, namespace: &str, id: &str) {
        self.shared.lock().deregister(namespace, id, true);
    }

    /// Stores an ACL policy (`nomad acl policy apply NAME`). Panics on a double without ACLs.
    pub fn add_policy(&self, name: &str, policy: Policy) {
        let mut st = self.shared.lock();
        let index = st.bump(&["acl_policy"]);
        st.acl
            .as_mut()
            .expect("add_policy: start the double with a token to turn ACLs on")
            .add_policy(name, policy, index);
    }

    /// Creates an ACL role linking these policies; returns its ID.
    pub fn add_role(&self, name: &str, policies: &[&str]) -> String {
        let mut st = self.shared.lock();
        let index = st.bump(&["acl_roles"]);
        st.acl
            .as_mut()
            .expect("add_role: start the double with a token to turn ACLs on")
            .add_role(name, policies, index)
    }

    /// Creates a client token with these policies and role IDs; returns its secret.
    pub fn add_token(&self, name: &str, policies: &[&str], roles: &[&str]) -> String {
        let mut st = self.shared.lock();
        let index = st.bump(&["acl_token"]);
        st.acl
            .as_mut()
            .expect("add_token: start the double with a token to turn ACLs on")
            .add_token(name, policies, roles, index)
    }

    /// Adds a namespace (only `default` exists at start, as on a fresh cluster).
    pub fn add_namespace(&self, name: &str) {
        self.shared.lock().namespaces.insert(name.to_owned());
    }

    /// The next `n` requests, whatever they are, get `status` with this plain-text body.
    pub fn fail_next(&self, n: usize, status: u16, body: &str) {
        self.shared.lock().fail = (n > 0).then(|| (n, status, body.to_owned()));
    }

    /// When on, plans report `FailedTGAllocs` and registers place nothing (blocked eval,
    /// `Queued` in the summary, job `pending`).
    pub fn set_placement_failure(&self, fail: bool) {
        self.shared.lock().placement_failure = fail;
    }

    /// The ClientStatus of allocations: new ones, and the live ones right now.
    /// One of `running`, `pending`, `failed`, `complete`, `lost`, `unknown`.
    pub fn set_alloc_status(&self, status: &str) {
        assert!(
            [
                "running", "pending", "failed", "complete", "lost", "unknown"
            ]
            .contains(&status),
            "set_alloc_status: {status:?} is not a Nomad ClientStatus"
        );
        self.shared.lock().set_alloc_status(status);
    }

    /// How new and running deployments' allocations report health (healthy at once by
    /// default).
    pub fn set_deployment_health(&self, health: DeploymentHealth) {
        self.shared.lock().health = health;
    }

    /// The deployments of a job, newest first.
    pub fn deployments(&self, namespace: &str, id: &str) -> Vec<Value> {
        let mut st = self.shared.lock();
        st.tick();
        match st.job_deployments(namespace, id, false) {
            Value::Array(items) => items,
            _ => Vec::new(),
        }
    }

    /// Shuts the server down (dropping does the same).
    pub fn stop(self) {}
}

impl Drop for NomadDouble {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Shared {
    state: Mutex<Nomad>,
    handshakes: Mutex<Vec<Handshake>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Nomad> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(a: &str, b: &str) -> (String, String) {
    (a.to_owned(), b.to_owned())
}
