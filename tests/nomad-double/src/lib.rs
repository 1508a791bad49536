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
//! test asks for them. Nothing runs; there are no deployments, canaries, reschedules, garbage
//! collection, HCL, Sentinel, Consul/Vault/Connect hooks, multiregion, dispatch, periodic
//! launches, pagination or `filter` expressions. Blocks the reference does not default
//! (services, networks, volumes, ...) are stored as sent (empty → null) and diffed
//! generically. ACL policies are not modelled: a double started with a token knows exactly
//! that one (management) token. Which endpoints answer `ACL token not found` for a wrong
//! token is unconfirmed in the reference; here: job endpoints say `Permission denied`,
//! variable endpoints `ACL token not found`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};

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

    /// The current raft index.
    pub fn index(&self) -> u64 {
        self.shared.lock().index
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

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

/// The crypto provider the double's TLS uses: ring, as tend's client does. Passed explicitly,
/// so the test process's default provider is left alone.
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA minted at start, with a server and a client certificate it signed (ECDSA P-256, as
/// `nomad tls ca create` / `nomad tls cert create` make).
struct Pki {
    ca: rcgen::Certificate,
    server: rcgen::Certificate,
    server_key: rcgen::KeyPair,
    client: rcgen::Certificate,
    client_key: rcgen::KeyPair,
}

impl Pki {
    fn new() -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Unique, as `nomad tls ca create` makes it: two CAs never share a name, so a
        // certificate of another CA is an unknown issuer, not a bad signature.
        let serial: u64 = rand::random();
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("Nomad Agent CA {serial} (tend test double)"),
        );
        ca_params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
        ];
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca certificate");
        let issuer = Issuer::new(ca_params, ca_key);

        let leaf = |sans: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(sans).expect("leaf params");
            params.distinguished_name.push(DnType::CommonName, cn);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("leaf key");
            let cert = params.signed_by(&key, &issuer).expect("leaf certificate");
            (cert, key)
        };
        let (server, server_key) = leaf(
            vec![
                "server.global.nomad".into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
            "server.global.nomad",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            vec!["cli.global.nomad".into()],
            "cli.global.nomad",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        Pki {
            ca,
            server,
            server_key,
            client,
            client_key,
        }
    }

    fn material(&self) -> TlsMaterial {
        TlsMaterial {
            ca_cert: self.ca.pem(),
            client_cert: self.client.pem(),
            client_key: self.client_key.serialize_pem(),
        }
    }

    fn server_config(&self, mode: TlsMode) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let builder = rustls::ServerConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .expect("nomad double: TLS versions");
        let builder = match mode {
            TlsMode::ServerOnly => builder.with_no_client_auth(),
            TlsMode::RequireClientCert => {
                let mut roots = rustls::RootCertStore::empty();
                roots
                    .add(self.ca.der().clone())
                    .expect("nomad double: CA root");
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    ring(),
                )
                .build()
                .expect("nomad double: client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.serialize_der()));
        let mut config = builder
            .with_single_cert(vec![self.server.der().clone()], key)
            .expect("nomad double: server certificate");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

type TlsConn = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

/// An axum listener that yields only connections whose TLS handshake completed. Handshakes run
/// in their own tasks (a client that never finishes one holds up no other), each recorded in
/// [`Shared::handshakes`].
struct TlsListener {
    incoming: tokio::sync::mpsc::UnboundedReceiver<(TlsConn, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(
        tcp: tokio::net::TcpListener,
        config: Arc<rustls::ServerConfig>,
        shared: Arc<Shared>,
    ) -> TlsListener {
        let local = tcp.local_addr().expect("nomad double: local addr");
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (stream, peer) = match tcp.accept().await {
                    Ok(c) => c,
                    Err(_) => {
                        // Out of file descriptors and the like: what axum's own loop does.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, tx, shared) = (acceptor.clone(), tx.clone(), shared.clone());
                tokio::spawn(async move {
                    let handshake = tokio::time::timeout(
                        Duration::from_secs(10),
                        acceptor.accept(stream).into_fallible(),
                    )
                    .await;
                    let (record, conn, refused) = match handshake {
                        Ok(Ok(conn)) => {
                            let client_cert = conn
                                .get_ref()
                                .1
                                .peer_certificates()
                                .is_some_and(|c| !c.is_empty());
                            let record = Handshake {
                                ok: true,
                                client_cert,
                                error: None,
                            };
                            (record, Some(conn), None)
                        }
                        Ok(Err((e, io))) => (Handshake::failed(e.to_string()), None, Some(io)),
                        Err(_) => (Handshake::failed("handshake timed out".into()), None, None),
                    };
                    shared
                        .handshakes
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(record);
                    if let Some(conn) = conn {
                        let _ = tx.send((conn, peer));
                    }
                    if let Some(io) = refused {
                        close_gracefully(io).await;
                    }
                });
            }
        });
        TlsListener { incoming, local }
    }
}

/// Close a refused connection so that the client reads the alert already sent: FIN, then read
/// what the client still sends until it closes. Go's server (so Nomad) just closes; under TLS
/// 1.3 a client that has already sent its request may then get a reset (the unread request)
/// instead of the alert, at random. The double leaves that race out, so tests are repeatable.
async fn close_gracefully(mut io: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = io.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async { while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
}

impl Handshake {
    fn failed(error: String) -> Handshake {
        Handshake {
            ok: false,
            client_cert: false,
            error: Some(error),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConn, SocketAddr) {
        match self.incoming.recv().await {
            Some(conn) => conn,
            // The accept task is gone (the runtime is shutting down): nothing more comes.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.local)
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP plumbing
// ---------------------------------------------------------------------------------------------

/// A request as the handlers see it.
struct Incoming {
    method: String,
    path: String,
    raw_query: String,
    query: Vec<(String, String)>,
    token: Option<String>,
    body: Bytes,
}

impl Incoming {
    /// Go's `Query().Get`: the first value, "" when absent.
    fn q(&self, k: &str) -> &str {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    fn has(&self, k: &str) -> bool {
        self.query.iter().any(|(n, _)| n == k)
    }
    fn namespace(&self) -> String {
        match self.q("namespace") {
            "" => "default".to_owned(),
            ns => ns.to_owned(),
        }
    }
}

enum Body {
    Json(Value),
    Text(String),
    Empty,
}

struct Reply {
    status: u16,
    body: Body,
    /// `X-Nomad-Index`, exactly as written.
    index: Option<u64>,
    /// Reads also carry `X-Nomad-KnownLeader` / `X-Nomad-LastContact`.
    query_meta: bool,
    /// A JSON body that Go would send as `text/plain` (409 variable conflicts).
    sniffed: bool,
}

impl Reply {
    fn json(v: Value) -> Reply {
        Reply {
            status: 200,
            body: Body::Json(v),
            index: None,
            query_meta: false,
            sniffed: false,
        }
    }
    fn err(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            body: Body::Text(msg.into()),
            index: None,
            query_meta: false,
            sniffed: false,
        }
    }
    fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: Body::Empty,
            index: None,
            query_meta: false,
            sniffed: false,
        }
    }
    /// Nomad's `setIndex`: never 0, so blocking queries cannot spin.
    fn index(mut self, i: u64) -> Reply {
        self.index = Some(i.max(1));
        self
    }
    /// Nomad's `setMeta`.
    fn meta(mut self, i: u64) -> Reply {
        self.query_meta = true;
        self.index(i)
    }
    fn status(mut self, s: u16) -> Reply {
        self.status = s;
        self
    }

    fn into_response(self, pretty: bool) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (ctype, bytes): (&str, Vec<u8>) = match self.body {
            Body::Json(v) => {
                let bytes = if pretty {
                    let mut buf = Vec::new();
                    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"    ");
                    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
                    v.serialize(&mut ser).expect("serialize json");
                    buf
                } else {
                    serde_json::to_vec(&v).expect("serialize json")
                };
                let ctype = if self.sniffed {
                    "text/plain; charset=utf-8"
                } else {
                    "application/json"
                };
                (ctype, bytes)
            }
            Body::Text(t) => ("text/plain; charset=utf-8", t.into_bytes()),
            Body::Empty => ("", Vec::new()),
        };
        let mut resp = (status, bytes).into_response();
        let h = resp.headers_mut();
        if ctype.is_empty() {
            h.remove("content-type");
        } else {
            h.insert("content-type", HeaderValue::from_static(ctype));
        }
        if let Some(i) = self.index {
            h.insert("x-nomad-index", HeaderValue::from(i));
        }
        if self.query_meta {
            h.insert("x-nomad-knownleader", HeaderValue::from_static("true"));
            h.insert("x-nomad-lastcontact", HeaderValue::from_static("0"));
        }
        resp
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw_query = uri.query().unwrap_or("").to_owned();
    let req = Incoming {
        method: method.as_str().to_owned(),
        path: percent_encoding::percent_decode_str(uri.path())
            .decode_utf8_lossy()
            .into_owned(),
        query: parse_query(&raw_query),
        raw_query,
        token: parse_token(&headers),
        body,
    };
    let pretty = req.has("pretty") && !matches!(req.q("pretty"), "0" | "false");
    let reply = answer(&shared, &req).await;
    let mut logged_token = req.token.clone();
    if logged_token.is_none() {
        logged_token = body_secret(&req.body);
    }
    shared.lock().log.push(Request {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.raw_query.clone(),
        token: logged_token,
        body: log_body(&req.body),
        status: reply.status,
    });
    reply.into_response(pretty)
}

async fn answer(shared: &Shared, req: &Incoming) -> Reply {
    {
        let mut st = shared.lock();
        if let Some((n, status, body)) = st.fail.take() {
            if n > 1 {
                st.fail = Some((n - 1, status, body.clone()));
            }
            return Reply::err(status, body);
        }
    }
    // Blocking queries (§1): only reads, and only with ?index=.
    let mut min_index = 0;
    let mut wait = Duration::from_secs(300);
    if req.method == "GET" {
        if req.has("wait") {
            match parse_go_duration(req.q("wait")) {
                Some(ns) if ns >= 0 => {
                    wait = Duration::from_nanos(ns as u64).min(Duration::from_secs(600))
                }
                _ => return Reply::err(400, "Invalid wait time"),
            }
        }
        if req.has("index") {
            match req.q("index").parse::<u64>() {
                Ok(i) => min_index = i,
                Err(_) => return Reply::err(400, "Invalid index"),
            }
        }
    }
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let (reply, mut changed) = {
            let mut st = shared.lock();
            let rx = st.index_tx.subscribe();
            (st.route(req), rx)
        };
        let blocked = min_index > 0
            && matches!(reply.status, 200 | 404)
            && reply.query_meta
            && reply.index.is_some_and(|i| i <= min_index)
            && tokio::time::Instant::now() < deadline;
        if !blocked {
            return reply;
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            // Timed out: answer with the current data.
            let mut st = shared.lock();
            return st.route(req);
        }
    }
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    let dec = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (dec(k), dec(v))
        })
        .collect()
}

/// `command/agent/http.go: parseToken`: X-Nomad-Token wins over `Authorization: Bearer`.
fn parse_token(h: &HeaderMap) -> Option<String> {
    if let Some(t) = h.get("x-nomad-token").and_then(|v| v.to_str().ok())
        && !t.is_empty()
    {
        return Some(t.to_owned());
    }
    let auth = h.get("authorization").and_then(|v| v.to_str().ok())?;
    let parts: Vec<&str> = auth.split(' ').collect();
    if parts.len() > 1 && parts[0].eq_ignore_ascii_case("bearer") {
        let value = parts[1..].join(" ");
        let first = value
            .trim()
            .split(' ')
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        return Some(first);
    }
    None
}

fn body_secret(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let s = get(v.as_object()?, "SecretID")?.as_str()?;
    (!s.is_empty()).then(|| s.to_owned())
}

fn log_body(body: &[u8]) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned()))
}

// ---------------------------------------------------------------------------------------------
// The cluster state
// ---------------------------------------------------------------------------------------------

struct Alloc {
    id: String,
    eval_id: String,
    name_index: u64,
    namespace: String,
    job_id: String,
    job_type: String,
    job_version: u64,
    job_create_index: u64,
    group: String,
    tasks: Vec<String>,
    /// The job spec (§3 fields removed) the allocation runs.
    job_spec: Value,
    desired: String,
    desired_desc: String,
    client: String,
    client_desc: String,
    create_index: u64,
    modify_index: u64,
    create_time: i64,
    modify_time: i64,
}

impl Alloc {
    fn terminal(&self) -> bool {
        self.desired != "run" || matches!(self.client.as_str(), "complete" | "failed" | "lost")
    }

    fn stub(&self) -> Value {
        let (state, failed) = match self.client.as_str() {
            "pending" => ("pending", false),
            "running" => ("running", false),
            "failed" | "lost" => ("dead", true),
            "unknown" => ("unknown", false),
            _ => ("dead", false),
        };
        let started = if state == "pending" {
            ZERO_TIME.to_owned()
        } else {
            rfc3339(self.create_time)
        };
        let finished = if state == "dead" {
            rfc3339(self.modify_time)
        } else {
            ZERO_TIME.to_owned()
        };
        let task_states: Obj = self
            .tasks
            .iter()
            .map(|t| {
                (
                    t.clone(),
                    json!({
                        "State": state, "Failed": failed, "Restarts": 0,
                        "LastRestart": ZERO_TIME, "StartedAt": started, "FinishedAt": finished,
                        "Events": [{"Type": "Received", "Time": self.create_time,
                                    "DisplayMessage": "Task received by client", "Details": {}}],
                    }),
                )
            })
            .collect();
        json!({
            "ID": self.id, "EvalID": self.eval_id,
            "Name": format!("{}.{}[{}]", self.job_id, self.group, self.name_index),
            "Namespace": self.namespace, "NodeID": NODE_ID, "NodeName": NODE_NAME,
            "JobID": self.job_id, "JobType": self.job_type, "JobVersion": self.job_version,
            "TaskGroup": self.group,
            "DesiredStatus": self.desired, "DesiredDescription": self.desired_desc,
            "ClientStatus": self.client, "ClientDescription": self.client_desc,
            "DesiredTransition": {"Migrate": null, "Reschedule": null, "ForceReschedule": null,
                                  "NoShutdownDelay": null},
            "TaskStates": task_states, "DeploymentStatus": null, "FollowupEvalID": "",
            "NextAllocation": "", "RescheduleTracker": null, "PreemptedAllocations": null,
            "PreemptedByAllocation": "",
            "CreateIndex": self.create_index, "ModifyIndex": self.modify_index,
            "CreateTime": self.create_time, "ModifyTime": self.modify_time,
        })
    }
}

fn client_description(status: &str) -> &'static str {
    match status {
        "pending" => "No tasks have started",
        "running" => "Tasks are running",
        "failed" => "Failed tasks",
        "complete" => "All tasks have completed",
        "lost" => "alloc is lost since its node is down",
        _ => "",
    }
}

struct SummaryMeta {
    create_index: u64,
    modify_index: u64,
    queued: BTreeMap<String, u64>,
}

struct Var {
    namespace: String,
    path: String,
    items: Obj,
    create_index: u64,
    create_time: i64,
    modify_index: u64,
    modify_time: i64,
}

impl Var {
    fn to_json(&self, items: bool) -> Value {
        let mut v = json!({
            "Namespace": self.namespace, "Path": self.path,
            "CreateIndex": self.create_index, "CreateTime": self.create_time,
            "ModifyIndex": self.modify_index, "ModifyTime": self.modify_time,
        });
        if items {
            v["Items"] = Value::Object(self.items.clone());
        }
        v
    }
}

/// Which endpoint family asks, for the wrong-token message (see the module doc).
#[derive(Clone, Copy, PartialEq)]
enum Family {
    Jobs,
    Vars,
}

/// What one reconcile decides for a task group (`scheduler/reconcile` in outline).
#[derive(Default)]
struct GroupPlan {
    ignore: usize,
    inplace: Vec<usize>,
    destructive: Vec<usize>,
    stop: Vec<usize>,
    place: Vec<u64>,
}

struct Nomad {
    token: Option<String>,
    accessor: String,
    namespaces: BTreeSet<String>,
    node_pools: BTreeSet<String>,
    index: u64,
    index_tx: tokio::sync::watch::Sender<u64>,
    tables: BTreeMap<&'static str, u64>,
    jobs: BTreeMap<(String, String), Value>,
    summaries: BTreeMap<(String, String), SummaryMeta>,
    allocs: Vec<Alloc>,
    evals: Vec<Value>,
    evaluations: usize,
    vars: BTreeMap<(String, String), Var>,
    log: Vec<Request>,
    fail: Option<(usize, u16, String)>,
    placement_failure: bool,
    alloc_status: String,
}

impl Nomad {
    fn new(token: Option<String>) -> Nomad {
        // A fresh cluster has done some raft writes already.
        let start = 10;
        Nomad {
            token,
            accessor: uuid(),
            namespaces: ["default".to_owned()].into(),
            node_pools: ["default".to_owned(), "all".to_owned()].into(),
            index: start,
            index_tx: tokio::sync::watch::channel(start).0,
            tables: BTreeMap::new(),
            jobs: BTreeMap::new(),
            summaries: BTreeMap::new(),
            allocs: Vec::new(),
            evals: Vec::new(),
            evaluations: 0,
            vars: BTreeMap::new(),
            log: Vec::new(),
            fail: None,
            placement_failure: false,
            alloc_status: "running".to_owned(),
        }
    }

    /// One raft write: the next index, recorded for the tables it touches.
    fn bump(&mut self, tables: &[&'static str]) -> u64 {
        self.index += 1;
        for t in tables {
            self.tables.insert(t, self.index);
        }
        self.index_tx.send_replace(self.index);
        self.index
    }

    fn table(&self, t: &str) -> u64 {
        self.tables.get(t).copied().unwrap_or(0)
    }

    fn auth(&self, token: Option<&str>, family: Family) -> Result<(), Reply> {
        let Some(want) = &self.token else {
            return Ok(());
        };
        match token {
            Some(t) if t == want => Ok(()),
            Some(t) if !t.is_empty() && family == Family::Vars => {
                Err(Reply::err(403, "ACL token not found"))
            }
            _ => Err(Reply::err(403, "Permission denied")),
        }
    }

    fn region(&self, requested: &str) -> Result<(), Reply> {
        if requested.is_empty() || requested == AGENT_REGION {
            Ok(())
        } else {
            Err(Reply::err(500, "No path to region"))
        }
    }

    fn route(&mut self, r: &Incoming) -> Reply {
        let m = r.method.as_str();
        let p = r.path.as_str();
        if p == "/v1/jobs" {
            return match m {
                "GET" => self.job_list(r),
                "PUT" | "POST" => self.job_register(r, None),
                _ => Reply::err(405, "Invalid method"),
            };
        }
        if let Some(rest) = p.strip_prefix("/v1/job/") {
            for (suffix, methods) in [
                ("/allocations", &["GET"][..]),
                ("/evaluations", &["GET"][..]),
                ("/plan", &["PUT", "POST"][..]),
                ("/summary", &[][..]),
            ] {
                if let Some(id) = rest.strip_suffix(suffix) {
                    if !methods.is_empty() && !methods.contains(&m) {
                        return Reply::err(405, "Invalid method");
                    }
                    return match suffix {
                        "/allocations" => self.job_allocations(r, id),
                        "/evaluations" => self.job_evaluations(r, id),
                        "/plan" => self.job_plan(r, id),
                        _ => self.job_summary(r, id),
                    };
                }
            }
            for unsupported in [
                "/evaluate",
                "/periodic/force",
                "/dispatch",
                "/versions",
                "/revert",
                "/deployments",
                "/deployment",
                "/stable",
                "/scale",
                "/services",
                "/submission",
                "/actions",
                "/action",
            ] {
                if rest.ends_with(unsupported) {
                    return Reply::err(
                        501,
                        format!(
                            "the Nomad double does not implement {p} (see tests/util/nomad.rs)"
                        ),
                    );
                }
            }
            return match m {
                "GET" => self.job_read(r, rest),
                "PUT" | "POST" => self.job_register(r, Some(rest)),
                "DELETE" => self.job_delete(r, rest),
                _ => Reply::err(405, "Invalid method"),
            };
        }
        if let Some(id) = p.strip_prefix("/v1/evaluation/") {
            if m != "GET" {
                return Reply::err(405, "Invalid method");
            }
            return self.eval_read(r, id);
        }
        if p == "/v1/vars" {
            if m != "GET" {
                return Reply::err(405, "Invalid method");
            }
            return self.var_list(r);
        }
        if let Some(path) = p.strip_prefix("/v1/var/") {
            if path.is_empty() {
                return Reply::err(400, "missing variable path");
            }
            return match m {
                "GET" => self.var_read(r, path),
                "PUT" | "POST" => self.var_write(r, path),
                "DELETE" => self.var_delete(r, path),
                _ => Reply::err(400, "Invalid method"),
            };
        }
        if p == "/v1/status/leader" {
            return Reply::json(json!("127.0.0.1:4647"));
        }
        Reply::err(404, "404 page not found\n")
    }

    // --- jobs: read ---------------------------------------------------------------------

    fn job_read(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        match self.jobs.get(&key(&r.namespace(), id)) {
            Some(job) => {
                let i = job["ModifyIndex"].as_u64().unwrap_or(0);
                Reply::json(job.clone()).meta(i)
            }
            None => Reply::err(404, "job not found").meta(self.table("jobs")),
        }
    }

    fn job_list(&mut self, r: &Incoming) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        if r.has("filter") {
            return Reply::err(400, "the Nomad double does not evaluate filter expressions");
        }
        let ns = r.namespace();
        let prefix = r.q("prefix");
        let with_meta = matches!(r.q("meta"), "true" | "1" | "t" | "T" | "TRUE" | "True");
        let stubs: Vec<Value> = self
            .jobs
            .iter()
            .filter(|((jns, id), _)| (ns == "*" || *jns == ns) && id.starts_with(prefix))
            .map(|((jns, id), job)| {
                let mut stub = json!({
                    "ID": job["ID"], "ParentID": job["ParentID"], "Name": job["Name"],
                    "Namespace": job["Namespace"], "Datacenters": job["Datacenters"],
                    "NodePool": job["NodePool"], "Multiregion": job["Multiregion"],
                    "Type": job["Type"], "Priority": job["Priority"],
                    "Periodic": !job["Periodic"].is_null(),
                    "ParameterizedJob": !job["ParameterizedJob"].is_null(),
                    "Stop": job["Stop"], "Status": job["Status"],
                    "StatusDescription": job["StatusDescription"],
                    "JobSummary": self.summary_json(jns, id).unwrap_or(Value::Null),
                    "CreateIndex": job["CreateIndex"], "ModifyIndex": job["ModifyIndex"],
                    "JobModifyIndex": job["JobModifyIndex"], "SubmitTime": job["SubmitTime"],
                });
                if with_meta && !job["Meta"].is_null() {
                    stub["Meta"] = job["Meta"].clone();
                }
                stub
            })
            .collect();
        Reply::json(Value::Array(stubs)).meta(self.table("jobs"))
    }

    fn job_summary(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        let ns = r.namespace();
        match self.summary_json(&ns, id) {
            Some(s) => {
                let i = s["ModifyIndex"].as_u64().unwrap_or(0);
                Reply::json(s).meta(i)
            }
            None => Reply::err(404, "job not found").meta(self.table("job_summary")),
        }
    }

    fn summary_json(&self, ns: &str, id: &str) -> Option<Value> {
        let meta = self.summaries.get(&key(ns, id))?;
        let job = self.jobs.get(&key(ns, id))?;
        let create = job["CreateIndex"].as_u64().unwrap_or(0);
        let mut groups = Obj::new();
        for g in job["TaskGroups"].as_array().into_iter().flatten() {
            let name = g["Name"].as_str().unwrap_or("");
            let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
            for a in self.allocs.iter().filter(|a| {
                a.namespace == ns
                    && a.job_id == id
                    && a.job_create_index == create
                    && a.group == name
            }) {
                let bucket = match a.client.as_str() {
                    "pending" => "Starting",
                    "running" => "Running",
                    "complete" => "Complete",
                    "failed" => "Failed",
                    "lost" => "Lost",
                    _ => "Unknown",
                };
                *counts.entry(bucket).or_default() += 1;
            }
            let c = |k: &str| counts.get(k).copied().unwrap_or(0);
            groups.insert(
                name.to_owned(),
                json!({
                    "Queued": meta.queued.get(name).copied().unwrap_or(0),
                    "Complete": c("Complete"), "Failed": c("Failed"), "Running": c("Running"),
                    "Starting": c("Starting"), "Lost": c("Lost"), "Unknown": c("Unknown"),
                }),
            );
        }
        Some(json!({
            "JobID": id, "Namespace": ns, "Summary": groups,
            "Children": {"Pending": 0, "Running": 0, "Dead": 0},
            "CreateIndex": meta.create_index, "ModifyIndex": meta.modify_index,
        }))
    }

    fn job_allocations(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        let ns = r.namespace();
        let all = matches!(r.q("all"), "true" | "1" | "t" | "T" | "TRUE" | "True");
        // state.AllocsByJob: without ?all only the current incarnation's (same CreateIndex).
        let create = self
            .jobs
            .get(&key(&ns, id))
            .and_then(|j| j["CreateIndex"].as_u64());
        let out: Vec<Value> = self
            .allocs
            .iter()
            .filter(|a| a.namespace == ns && a.job_id == id)
            .filter(|a| all || create.is_none_or(|c| a.job_create_index == c))
            .map(Alloc::stub)
            .collect();
        Reply::json(Value::Array(out)).meta(self.table("allocs"))
    }

    fn job_evaluations(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        let ns = r.namespace();
        let out: Vec<Value> = self
            .evals
            .iter()
            .filter(|e| e["Namespace"] == ns.as_str() && e["JobID"] == id)
            .cloned()
            .collect();
        Reply::json(Value::Array(out)).meta(self.table("evals"))
    }

    fn eval_read(&mut self, r: &Incoming, id: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        match self.evals.iter().find(|e| e["ID"] == id) {
            Some(e) => {
                let i = e["ModifyIndex"].as_u64().unwrap_or(0);
                Reply::json(e.clone()).meta(i)
            }
            None => Reply::err(404, "eval not found").meta(self.table("evals")),
        }
    }

    // --- jobs: register -----------------------------------------------------------------

    fn job_register(&mut self, r: &Incoming, path_id: Option<&str>) -> Reply {
        const ST: &str = "JobRegisterRequest";
        let body = match decode_body(&r.body, "api.JobRegisterRequest") {
            Ok(b) => b,
            Err(e) => return Reply::err(400, e),
        };
        let b = &body;
        let mut d = Dec::default();
        let enforce = d.b(b, ST, "EnforceIndex").unwrap_or(false);
        let jmi = d.u(b, ST, "JobModifyIndex").unwrap_or(0);
        d.b(b, ST, "PolicyOverride");
        let preserve_counts = d.b(b, ST, "PreserveCounts").unwrap_or(false);
        let preserve_resources = d.b(b, ST, "PreserveResources").unwrap_or(false);
        let eval_priority = d.i(b, ST, "EvalPriority").unwrap_or(0);
        d.val(b, ST, "Submission", K::Any);
        let body_region = d.s(b, ST, "Region").unwrap_or_default();
        let body_ns = d.s(b, ST, "Namespace").unwrap_or_default();
        let secret = d.s(b, ST, "SecretID").unwrap_or_default();
        let job_src = d.obj(b, ST, "Job", "api.Job");
        let (request_region, job_region) = region_for_job(job_src, r.q("region"), &body_region);
        let namespace = namespace_for_job(job_src, r.q("namespace"), &body_ns);
        let job = job_src.map(|j| canonical_job(&mut d, j, &namespace, &job_region));
        if let Some(e) = d.err {
            return Reply::err(400, e);
        }
        let (Some(job_src), Some(mut job)) = (job_src, job) else {
            return Reply::err(400, "Job must be specified");
        };
        if get(job_src, "ID").is_none() {
            return Reply::err(400, "Job ID hasn't been provided");
        }
        let id = job["ID"].as_str().unwrap_or("").to_owned();
        if let Some(pid) = path_id
            && !pid.is_empty()
            && pid != id
        {
            return Reply::err(400, "Job ID does not match name");
        }
        if job["Type"] == "system"
            && job["TaskGroups"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|g| !g["Scaling"].is_null())
        {
            return Reply::err(
                400,
                "Task groups with job type system do not support scaling blocks",
            );
        }
        if eval_priority != 0 && !(1..=100).contains(&eval_priority) {
            return Reply::err(400, "Eval priority must be between 1 and 100 inclusively");
        }
        if let Err(e) = self.region(&request_region) {
            return e;
        }
        let token = r
            .token
            .clone()
            .or_else(|| (!secret.is_empty()).then_some(secret));
        if let Err(e) = self.auth(token.as_deref(), Family::Jobs) {
            return e;
        }
        if let Err(e) = self.admit(&job) {
            return Reply::err(500, e);
        }
        if self.token.is_some() {
            job.insert("NomadTokenID".into(), json!(self.accessor));
        }
        let opts = RegisterOpts {
            enforce: enforce.then_some(jmi),
            preserve_counts,
            preserve_resources,
            eval_priority,
        };
        match self.register(&namespace, job, &opts) {
            Ok(resp) => {
                let i = resp["Index"].as_u64().unwrap_or(0);
                Reply::json(resp).index(i)
            }
            Err(e) => Reply::err(500, e),
        }
    }

    /// Admission validators (§2.1 step 3): namespace, node pool, `Job.Validate`, priority.
    fn admit(&self, job: &Obj) -> Result<(), String> {
        let mut errs = Vec::new();
        let id = job["ID"].as_str().unwrap_or("");
        let ns = job["Namespace"].as_str().unwrap_or("");
        if !self.namespaces.contains(ns) {
            errs.push(format!("job {id:?} is in nonexistent namespace {ns:?}"));
        }
        let pool = job["NodePool"].as_str().unwrap_or("");
        if !self.node_pools.contains(pool) {
            errs.push(format!("job {id:?} is in nonexistent node pool {pool:?}"));
        }
        errs.extend(validate_job(job));
        if errs.is_empty() {
            Ok(())
        } else {
            Err(multierror(&errs))
        }
    }

    /// `Job.Register` from the EnforceIndex check on (§2.1 steps 5–9, §3).
    fn register(&mut self, ns: &str, mut job: Obj, opts: &RegisterOpts) -> Result<Value, String> {
        let id = job["ID"].as_str().unwrap_or("").to_owned();
        let k = key(ns, &id);
        let existing = self.jobs.get(&k).cloned();
        if let Some(n) = opts.enforce {
            const P: &str = "Enforcing job modify index";
            match &existing {
                Some(e) => {
                    let cur = e["JobModifyIndex"].as_u64().unwrap_or(0);
                    if n == 0 {
                        return Err(format!("{P} 0: job already exists"));
                    } else if n != cur {
                        return Err(format!(
                            "{P} {n}: job exists with conflicting job modify index: {cur}"
                        ));
                    }
                }
                None if n != 0 => return Err(format!("{P} {n}: job does not exist")),
                None => {}
            }
        }
        if let Some(e) = &existing {
            validate_job_update(e, &job)?;
            if opts.preserve_counts || opts.preserve_resources {
                preserve(e, &mut job, opts.preserve_counts, opts.preserve_resources);
            }
        }
        let candidate = Value::Object(job.clone());
        let periodic_or_param = is_periodic_or_param(&candidate);
        let changed = existing
            .as_ref()
            .is_none_or(|e| spec_of(e) != spec_of(&candidate));
        let now = now_ns();
        let priority = if opts.eval_priority > 0 {
            opts.eval_priority
        } else {
            job["Priority"].as_i64().unwrap_or(50)
        };
        let mut resp = json!({
            "EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "Warnings": "",
            "Index": 0, "LastContact": 0, "KnownLeader": false, "NextToken": "",
        });
        let mut eval_id = None;
        if changed {
            let index = self.bump(&["jobs", "job_summary"]);
            let (create, version) = match &existing {
                Some(e) => (
                    e["CreateIndex"].as_u64().unwrap_or(index),
                    e["Version"].as_u64().unwrap_or(0) + 1,
                ),
                None => (index, 0),
            };
            job.insert("CreateIndex".into(), json!(create));
            job.insert("ModifyIndex".into(), json!(index));
            job.insert("JobModifyIndex".into(), json!(index));
            job.insert("Version".into(), json!(version));
            job.insert("SubmitTime".into(), json!(now));
            job.insert("Stable".into(), json!(false));
            job.insert("StatusDescription".into(), json!(""));
            job.insert("Status".into(), json!("pending"));
            self.jobs.insert(k.clone(), Value::Object(job.clone()));
            let summary = self.summaries.entry(k.clone()).or_insert(SummaryMeta {
                create_index: create,
                modify_index: index,
                queued: BTreeMap::new(),
            });
            summary.modify_index = index;
            if !periodic_or_param {
                let eid = self.new_eval(index, ns, &job, "job-register", index, priority);
                resp["EvalID"] = json!(eid);
                resp["EvalCreateIndex"] = json!(index);
                eval_id = Some(eid);
            }
            resp["JobModifyIndex"] = json!(index);
            resp["Index"] = json!(index);
            self.refresh_status(ns, &id, index);
        } else {
            let e = existing.as_ref().expect("unchanged implies existing");
            let modify = e["ModifyIndex"].as_u64().unwrap_or(0);
            // Nomad ≥ 1.11.2 answers the existing ModifyIndex here (§3).
            resp["JobModifyIndex"] = json!(modify);
            if periodic_or_param {
                resp["Index"] = json!(modify);
            } else {
                let index = self.bump(&["evals"]);
                let jmi = e["JobModifyIndex"].as_u64().unwrap_or(0);
                let existing_obj = e.as_object().expect("job object").clone();
                let eid = self.new_eval(index, ns, &existing_obj, "job-register", jmi, priority);
                resp["EvalID"] = json!(eid);
                resp["EvalCreateIndex"] = json!(index);
                resp["Index"] = json!(index);
                eval_id = Some(eid);
            }
        }
        if let Some(eid) = eval_id {
            self.process(ns, &id, &eid);
        }
        Ok(resp)
    }

    fn register_out_of_band(&mut self, ns: &str, id: &str, edited: Value) -> Result<(), String> {
        let Value::Object(src) = edited else {
            return Err("the edited job is not a JSON object".into());
        };
        let mut d = Dec::default();
        let region = src
            .get("Region")
            .and_then(Value::as_str)
            .unwrap_or(AGENT_REGION)
            .to_owned();
        let mut job = canonical_job(&mut d, &src, ns, &region);
        if let Some(e) = d.err {
            return Err(e);
        }
        if job["ID"] != id {
            return Err("edit_job must not change the job ID".into());
        }
        if let Some(t) = src.get("NomadTokenID") {
            job.insert("NomadTokenID".into(), t.clone());
        }
        self.admit(&job)?;
        self.register(ns, job, &RegisterOpts::default()).map(|_| ())
    }

    fn new_eval(
        &mut self,
        index: u64,
        ns: &str,
        job: &Obj,
        trigger: &str,
        jmi: u64,
        priority: i64,
    ) -> String {
        let id = uuid();
        let now = now_ns();
        self.evals.push(json!({
            "ID": id, "Namespace": ns, "Priority": priority, "Type": job["Type"],
            "TriggeredBy": trigger, "JobID": job["ID"], "JobModifyIndex": jmi, "NodeID": "",
            "NodeModifyIndex": 0, "DeploymentID": "", "Status": "pending",
            "StatusDescription": "", "Wait": 0, "WaitUntil": ZERO_TIME, "NextEval": "",
            "PreviousEval": "", "BlockedEval": "", "RelatedEvals": null, "FailedTGAllocs": null,
            "ClassEligibility": null, "QuotaLimitReached": "", "EscapedComputedClass": false,
            "AnnotatePlan": false, "QueuedAllocations": null, "LeaderACL": "",
            "SnapshotIndex": 0, "CreateIndex": index, "ModifyIndex": index,
            "CreateTime": now, "ModifyTime": now,
        }));
        if trigger.starts_with("job-") {
            self.evaluations += 1;
        }
        id
    }

    // --- jobs: deregister ---------------------------------------------------------------

    fn job_delete(&mut self, r: &Incoming, id: &str) -> Reply {
        let mut purge = false;
        for flag in ["purge", "global", "no_shutdown_delay"] {
            let v = r.q(flag);
            if v.is_empty() {
                continue;
            }
            match parse_go_bool(v) {
                Some(b) => {
                    if flag == "purge" {
                        purge = b;
                    }
                }
                None => {
                    return Reply::err(
                        500,
                        format!(
                            "Failed to parse value of {flag:?} ({v}) as a bool: strconv.ParseBool: parsing {v:?}: invalid syntax"
                        ),
                    );
                }
            }
        }
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Jobs) {
            return e;
        }
        let resp = self.deregister(&r.namespace(), id, purge);
        let i = resp["Index"].as_u64().unwrap_or(0);
        Reply::json(resp).index(i)
    }

    fn deregister(&mut self, ns: &str, id: &str, purge: bool) -> Value {
        let k = key(ns, id);
        let mut resp = json!({
            "EvalID": "", "EvalCreateIndex": 0, "JobModifyIndex": 0, "VolumeEvalID": "",
            "VolumeEvalIndex": 0, "Index": 0, "LastContact": 0, "KnownLeader": false,
            "NextToken": "",
        });
        let Some(job) = self.jobs.get(&k).cloned() else {
            return resp;
        };
        let index = self.bump(&["jobs", "job_summary", "evals"]);
        let obj = job.as_object().expect("job object").clone();
        let mut eval_id = None;
        if !is_periodic_or_param(&job) {
            let priority = job["Priority"].as_i64().unwrap_or(50);
            eval_id = Some(self.new_eval(index, ns, &obj, "job-deregister", index, priority));
        }
        if purge {
            self.jobs.remove(&k);
            self.summaries.remove(&k);
        } else {
            let mut stopped = obj;
            stopped.insert("Stop".into(), json!(true));
            let version = stopped["Version"].as_u64().unwrap_or(0) + 1;
            stopped.insert("Version".into(), json!(version));
            stopped.insert("ModifyIndex".into(), json!(index));
            stopped.insert("JobModifyIndex".into(), json!(index));
            stopped.insert("Stable".into(), json!(false));
            self.jobs.insert(k.clone(), Value::Object(stopped));
            self.refresh_status(ns, id, index);
        }
        resp["EvalID"] = json!(eval_id.clone().unwrap_or_default());
        resp["EvalCreateIndex"] = json!(index);
        resp["JobModifyIndex"] = json!(index);
        resp["Index"] = json!(index);
        if let Some(eid) = eval_id {
            self.process(ns, id, &eid);
        }
        resp
    }

    // --- jobs: plan ---------------------------------------------------------------------

    fn job_plan(&mut self, r: &Incoming, path_id: &str) -> Reply {
        const ST: &str = "JobPlanRequest";
        let body = match decode_body(&r.body, "api.JobPlanRequest") {
            Ok(b) => b,
            Err(e) => return Reply::err(400, e),
        };
        let b = &body;
        let mut d = Dec::default();
        let want_diff = d.b(b, ST, "Diff").unwrap_or(false);
        d.b(b, ST, "PolicyOverride");
        let body_region = d.s(b, ST, "Region").unwrap_or_default();
        let body_ns = d.s(b, ST, "Namespace").unwrap_or_default();
        let secret = d.s(b, ST, "SecretID").unwrap_or_default();
        let job_src = d.obj(b, ST, "Job", "api.Job");
        let (request_region, job_region) = region_for_job(job_src, r.q("region"), &body_region);
        let namespace = namespace_for_job(job_src, r.q("namespace"), &body_ns);
        let job = job_src.map(|j| canonical_job(&mut d, j, &namespace, &job_region));
        if let Some(e) = d.err {
            return Reply::err(400, e);
        }
        let (Some(job_src), Some(mut job)) = (job_src, job) else {
            return Reply::err(400, "Job must be specified");
        };
        if get(job_src, "ID").is_none() {
            return Reply::err(400, "Job must have a valid ID");
        }
        let id = job["ID"].as_str().unwrap_or("").to_owned();
        if !path_id.is_empty() && path_id != id {
            return Reply::err(400, "Job ID does not match");
        }
        if let Err(e) = self.region(&request_region) {
            return e;
        }
        let token = r
            .token
            .clone()
            .or_else(|| (!secret.is_empty()).then_some(secret));
        if let Err(e) = self.auth(token.as_deref(), Family::Jobs) {
            return e;
        }
        if let Err(e) = self.admit(&job) {
            return Reply::err(500, e);
        }
        if self.token.is_some() {
            job.insert("NomadTokenID".into(), json!(self.accessor));
        }
        let existing = self.jobs.get(&key(&namespace, &id)).cloned();
        if let Some(e) = &existing
            && let Err(msg) = validate_job_update(e, &job)
        {
            return Reply::err(500, msg);
        }
        let jmi = existing
            .as_ref()
            .and_then(|e| e["JobModifyIndex"].as_u64())
            .unwrap_or(0);
        // The planned job as the scheduler would see it in its snapshot.
        let mut candidate = job.clone();
        if let Some(e) = &existing {
            for f in SERVER_FIELDS {
                candidate.insert(f.into(), e[f].clone());
            }
        }
        let candidate = Value::Object(candidate);
        let plan = self.reconcile(&namespace, &id, Some(&candidate));
        let mut tg_updates = Obj::new();
        let mut failed = Obj::new();
        for (g, p) in &plan {
            tg_updates.insert(
                g.clone(),
                json!({
                    "Ignore": p.ignore, "Place": p.place.len(), "Migrate": 0,
                    "Stop": p.stop.len(), "InPlaceUpdate": p.inplace.len(),
                    "DestructiveUpdate": p.destructive.len(), "Canary": 0, "Preemptions": 0,
                    "Reconnect": 0, "Disconnect": 0, "RescheduleNow": 0, "RescheduleLater": 0,
                }),
            );
            let wanted = p.place.len() + p.destructive.len();
            if self.placement_failure && wanted > 0 {
                failed.insert(g.clone(), alloc_metric(wanted));
            }
        }
        let diff = want_diff.then(|| {
            let old = existing.as_ref().and_then(Value::as_object);
            let mut jd = job_diff(old, &job);
            annotate(&mut jd, &plan);
            jd.to_json()
        });
        let resp = json!({
            "Annotations": {"DesiredTGUpdates": tg_updates, "PreemptedAllocs": null},
            "FailedTGAllocs": if failed.is_empty() { Value::Null } else { Value::Object(failed) },
            "JobModifyIndex": jmi, "CreatedEvals": null,
            "Diff": diff.unwrap_or(Value::Null),
            "NextPeriodicLaunch": ZERO_TIME, "Warnings": "", "Index": jmi,
        });
        Reply::json(resp).index(jmi)
    }

    // --- the simulated scheduler --------------------------------------------------------

    /// What the reconciler would do for this job (None: purged) given the live allocations.
    fn reconcile(&self, ns: &str, id: &str, job: Option<&Value>) -> BTreeMap<String, GroupPlan> {
        let mut out: BTreeMap<String, GroupPlan> = BTreeMap::new();
        let live: Vec<usize> = self
            .allocs
            .iter()
            .enumerate()
            .filter(|(_, a)| a.namespace == ns && a.job_id == id && !a.terminal())
            .map(|(i, _)| i)
            .collect();
        let running = job.filter(|j| !j["Stop"].as_bool().unwrap_or(false));
        let Some(job) = running else {
            for i in live {
                out.entry(self.allocs[i].group.clone())
                    .or_default()
                    .stop
                    .push(i);
            }
            if let Some(j) = job {
                for g in j["TaskGroups"].as_array().into_iter().flatten() {
                    out.entry(g["Name"].as_str().unwrap_or("").to_owned())
                        .or_default();
                }
            }
            return out;
        };
        let spec = spec_of(job);
        let create = job["CreateIndex"].as_u64().unwrap_or(0);
        let groups: Vec<&Value> = job["TaskGroups"].as_array().into_iter().flatten().collect();
        let names: BTreeSet<&str> = groups.iter().filter_map(|g| g["Name"].as_str()).collect();
        for &i in &live {
            let a = &self.allocs[i];
            if a.job_create_index != create || !names.contains(a.group.as_str()) {
                out.entry(a.group.clone()).or_default().stop.push(i);
            }
        }
        for g in groups {
            let name = g["Name"].as_str().unwrap_or("").to_owned();
            let count = g["Count"].as_i64().unwrap_or(0).max(0) as usize;
            let mut existing: Vec<usize> = live
                .iter()
                .copied()
                .filter(|&i| {
                    let a = &self.allocs[i];
                    a.job_create_index == create && a.group == name
                })
                .collect();
            existing.sort_by_key(|&i| self.allocs[i].name_index);
            let plan = out.entry(name.clone()).or_default();
            let keep = count.min(existing.len());
            plan.stop.extend_from_slice(&existing[keep..]);
            let mut used = BTreeSet::new();
            for &i in &existing[..keep] {
                let a = &self.allocs[i];
                used.insert(a.name_index);
                if a.job_spec == spec {
                    plan.ignore += 1;
                } else if tasks_updated(&a.job_spec, &spec, &name) {
                    plan.destructive.push(i);
                } else {
                    plan.inplace.push(i);
                }
            }
            plan.place = (0u64..)
                .filter(|n| !used.contains(n))
                .take(count - keep)
                .collect();
        }
        out
    }

    /// Processes an evaluation at once, one raft index after the write that created it.
    fn process(&mut self, ns: &str, id: &str, eval_id: &str) {
        let job = self.jobs.get(&key(ns, id)).cloned();
        let plan = self.reconcile(ns, id, job.as_ref());
        let index = self.bump(&["evals", "allocs", "job_summary"]);
        let now = now_ns();
        let spec = job.as_ref().map(spec_of).unwrap_or(Value::Null);
        let mut queued: BTreeMap<String, u64> = BTreeMap::new();
        let mut failed = Obj::new();
        for (group, p) in &plan {
            for &i in &p.stop {
                let a = &mut self.allocs[i];
                a.desired = "stop".into();
                a.desired_desc = "alloc not needed due to job update".into();
                if !matches!(a.client.as_str(), "complete" | "failed" | "lost") {
                    a.client = "complete".into();
                    a.client_desc = client_description("complete").into();
                }
                a.modify_index = index;
                a.modify_time = now;
            }
            let Some(job) = &job else { continue };
            for &i in &p.inplace {
                let a = &mut self.allocs[i];
                a.job_spec = spec.clone();
                a.job_version = job["Version"].as_u64().unwrap_or(0);
                a.modify_index = index;
                a.modify_time = now;
            }
            let mut failures = 0;
            for &i in &p.destructive {
                if self.placement_failure {
                    failures += 1;
                    continue;
                }
                let slot = self.allocs[i].name_index;
                let a = &mut self.allocs[i];
                a.desired = "stop".into();
                a.desired_desc = "alloc is being updated due to job update".into();
                a.client = "complete".into();
                a.client_desc = client_description("complete").into();
                a.modify_index = index;
                a.modify_time = now;
                self.place(job, &spec, group, slot, eval_id, index);
            }
            for &slot in &p.place {
                if self.placement_failure {
                    failures += 1;
                    continue;
                }
                self.place(job, &spec, group, slot, eval_id, index);
            }
            if failures > 0 {
                failed.insert(group.clone(), alloc_metric(failures));
            }
            queued.insert(group.clone(), failures as u64);
        }
        // Older blocked evaluations of this job are superseded.
        for e in self.evals.iter_mut() {
            if e["Namespace"] == ns && e["JobID"] == id && e["Status"] == "blocked" {
                e["Status"] = json!("canceled");
                e["StatusDescription"] = json!("evaluation is outdated");
                e["ModifyIndex"] = json!(index);
            }
        }
        let blocked = (!failed.is_empty()).then(uuid);
        if let Some(bid) = &blocked {
            let mut b = self
                .evals
                .iter()
                .find(|e| e["ID"] == eval_id)
                .cloned()
                .unwrap_or(Value::Null);
            b["ID"] = json!(bid);
            b["Status"] = json!("blocked");
            b["StatusDescription"] = json!("created to place remaining allocations");
            b["TriggeredBy"] = json!("queued-allocs");
            b["PreviousEval"] = json!(eval_id);
            b["CreateIndex"] = json!(index);
            b["ModifyIndex"] = json!(index);
            self.evals.push(b);
        }
        if let Some(e) = self.evals.iter_mut().find(|e| e["ID"] == eval_id) {
            e["Status"] = json!("complete");
            e["ModifyIndex"] = json!(index);
            e["ModifyTime"] = json!(now);
            e["QueuedAllocations"] = json!(queued);
            e["FailedTGAllocs"] = if failed.is_empty() {
                Value::Null
            } else {
                Value::Object(failed)
            };
            e["BlockedEval"] = json!(blocked.unwrap_or_default());
        }
        if let Some(s) = self.summaries.get_mut(&key(ns, id)) {
            s.queued = queued;
            s.modify_index = index;
        }
        self.refresh_status(ns, id, index);
    }

    fn place(
        &mut self,
        job: &Value,
        spec: &Value,
        group: &str,
        slot: u64,
        eval_id: &str,
        index: u64,
    ) {
        let now = now_ns();
        let tasks = job["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["Name"] == group)
            .map(|g| {
                g["Tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t["Name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let status = self.alloc_status.clone();
        self.allocs.push(Alloc {
            id: uuid(),
            eval_id: eval_id.to_owned(),
            name_index: slot,
            namespace: job["Namespace"].as_str().unwrap_or("").to_owned(),
            job_id: job["ID"].as_str().unwrap_or("").to_owned(),
            job_type: job["Type"].as_str().unwrap_or("").to_owned(),
            job_version: job["Version"].as_u64().unwrap_or(0),
            job_create_index: job["CreateIndex"].as_u64().unwrap_or(0),
            group: group.to_owned(),
            tasks,
            job_spec: spec.clone(),
            desired: "run".into(),
            desired_desc: String::new(),
            client_desc: client_description(&status).into(),
            client: status,
            create_index: index,
            modify_index: index,
            create_time: now,
            modify_time: now,
        });
    }

    /// `state_store.getJobStatus`; a change moves ModifyIndex only.
    fn refresh_status(&mut self, ns: &str, id: &str, index: u64) {
        let Some(job) = self.jobs.get(&key(ns, id)) else {
            return;
        };
        let stop = job["Stop"].as_bool().unwrap_or(false);
        let status = if job["Type"] == "system" || is_periodic_or_param(job) {
            if stop { "dead" } else { "running" }
        } else {
            let mine = |a: &&Alloc| a.namespace == ns && a.job_id == id;
            let any_alloc = self.allocs.iter().any(|a| mine(&a));
            let live_alloc = self.allocs.iter().filter(mine).any(|a| !a.terminal());
            let evals: Vec<&Value> = self
                .evals
                .iter()
                .filter(|e| e["Namespace"] == ns && e["JobID"] == id)
                .collect();
            let live_eval = evals.iter().any(|e| {
                !matches!(
                    e["Status"].as_str(),
                    Some("complete" | "failed" | "canceled")
                )
            });
            if live_alloc {
                "running"
            } else if live_eval {
                "pending"
            } else if stop || any_alloc || !evals.is_empty() {
                "dead"
            } else {
                "pending"
            }
        };
        if job["Status"] != status {
            let job = self.jobs.get_mut(&key(ns, id)).expect("job present");
            job["Status"] = json!(status);
            job["ModifyIndex"] = json!(index);
            self.tables.insert("jobs", index);
        }
    }

    fn set_alloc_status(&mut self, status: &str) {
        self.alloc_status = status.to_owned();
        let index = self.bump(&["allocs", "job_summary"]);
        let now = now_ns();
        let mut touched = BTreeSet::new();
        for a in self.allocs.iter_mut().filter(|a| !a.terminal()) {
            a.client = status.to_owned();
            a.client_desc = client_description(status).into();
            a.modify_index = index;
            a.modify_time = now;
            touched.insert((a.namespace.clone(), a.job_id.clone()));
        }
        for (ns, id) in touched {
            if let Some(s) = self.summaries.get_mut(&key(&ns, &id)) {
                s.modify_index = index;
            }
            self.refresh_status(&ns, &id, index);
        }
    }

    // --- variables ----------------------------------------------------------------------

    fn var_read(&mut self, r: &Incoming, path: &str) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Vars) {
            return e;
        }
        match self.vars.get(&key(&r.namespace(), path)) {
            Some(v) => Reply::json(v.to_json(true)).meta(v.modify_index),
            None => Reply::err(404, "variable not found").meta(self.table("variables")),
        }
    }

    fn var_list(&mut self, r: &Incoming) -> Reply {
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if r.has("filter") {
            return Reply::err(400, "the Nomad double does not evaluate filter expressions");
        }
        let index = self.table("variables");
        match self.auth(r.token.as_deref(), Family::Vars) {
            Ok(()) => {}
            // Entries the (anonymous) token cannot list are dropped, not refused.
            Err(_) if r.token.is_none() => return Reply::json(json!([])).meta(index),
            Err(e) => return e,
        }
        let ns = r.namespace();
        let prefix = r.q("prefix");
        let out: Vec<Value> = self
            .vars
            .values()
            .filter(|v| (ns == "*" || v.namespace == ns) && v.path.starts_with(prefix))
            .map(|v| v.to_json(false))
            .collect();
        Reply::json(Value::Array(out)).meta(index)
    }

    fn var_cas(&self, r: &Incoming) -> Result<Option<u64>, Reply> {
        let cas = r.q("cas");
        if cas.is_empty() {
            return Ok(None);
        }
        cas.parse::<u64>().map(Some).map_err(|_| {
            Reply::err(
                400,
                format!("can not parse cas: strconv.ParseUint: parsing {cas:?}: invalid syntax"),
            )
        })
    }

    /// The 409 of a failed check-and-set: the current variable, or its zero value.
    fn var_conflict(&self, ns: &str, path: &str) -> Reply {
        let (body, index) = match self.vars.get(&key(ns, path)) {
            Some(v) => (v.to_json(true), v.modify_index),
            None => (
                json!({"Namespace": ns, "Path": path, "CreateIndex": 0, "CreateTime": 0,
                       "ModifyIndex": 0, "ModifyTime": 0}),
                0,
            ),
        };
        let mut reply = Reply::json(body).status(409);
        reply.index = Some(index);
        reply.sniffed = true;
        reply
    }

    fn var_write(&mut self, r: &Incoming, path: &str) -> Reply {
        const ST: &str = "VariableDecrypted";
        let body = match decode_body(&r.body, "structs.VariableDecrypted") {
            Ok(b) => b,
            Err(e) => return Reply::err(400, e),
        };
        let mut d = Dec::default();
        let body_ns = d.s(&body, ST, "Namespace").unwrap_or_default();
        d.s(&body, ST, "Path");
        let items = d.val(&body, ST, "Items", K::StrMap);
        for f in ["CreateIndex", "ModifyIndex"] {
            d.u(&body, ST, f);
        }
        for f in ["CreateTime", "ModifyTime"] {
            d.i(&body, ST, f);
        }
        if let Some(e) = d.err {
            return Reply::err(400, e);
        }
        let items = match items {
            Some(Value::Object(m)) if !m.is_empty() => m,
            _ => return Reply::err(400, "variable missing required Items object"),
        };
        let cas = match self.var_cas(r) {
            Ok(c) => c,
            Err(e) => return e,
        };
        let ns = if body_ns.is_empty() {
            r.namespace()
        } else {
            body_ns
        };
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Vars) {
            return e;
        }
        if let Err(e) = validate_variable(&ns, path, &items) {
            return Reply::err(400, format!("RPC Error:: 400,{e}"));
        }
        let k = key(&ns, path);
        if let Some(c) = cas {
            let cur = self.vars.get(&k).map(|v| v.modify_index);
            let ok = match (c, cur) {
                (0, None) => true,
                (0, Some(_)) => false,
                (n, Some(m)) => n == m,
                (_, None) => false,
            };
            if !ok {
                return self.var_conflict(&ns, path);
            }
        }
        let index = self.bump(&["variables"]);
        let now = now_ns();
        let (create_index, create_time) = self
            .vars
            .get(&k)
            .map(|v| (v.create_index, v.create_time))
            .unwrap_or((index, now));
        let v = Var {
            namespace: ns,
            path: path.to_owned(),
            items,
            create_index,
            create_time,
            modify_index: index,
            modify_time: now,
        };
        let out = v.to_json(true);
        self.vars.insert(k, v);
        Reply::json(out).index(index)
    }

    fn var_delete(&mut self, r: &Incoming, path: &str) -> Reply {
        let cas = match self.var_cas(r) {
            Ok(c) => c,
            Err(e) => return e,
        };
        if let Err(e) = self.region(r.q("region")) {
            return e;
        }
        if let Err(e) = self.auth(r.token.as_deref(), Family::Vars) {
            return e;
        }
        let ns = r.namespace();
        let k = key(&ns, path);
        if let Some(c) = cas {
            let cur = self.vars.get(&k).map(|v| v.modify_index);
            let ok = match (c, cur) {
                (0, None) => true,
                (0, Some(_)) => false,
                (n, Some(m)) => n == m,
                (_, None) => false,
            };
            if !ok {
                return self.var_conflict(&ns, path);
            }
        }
        let index = self.bump(&["variables"]);
        self.vars.remove(&k);
        Reply::empty(204).index(index)
    }
}

#[derive(Default)]
struct RegisterOpts {
    enforce: Option<u64>,
    preserve_counts: bool,
    preserve_resources: bool,
    eval_priority: i64,
}

fn alloc_metric(failures: usize) -> Value {
    json!({
        "NodesEvaluated": 1, "NodesFiltered": 0, "NodesInPool": 1,
        "NodesAvailable": {"dc1": 1}, "ClassFiltered": null, "ConstraintFiltered": null,
        "NodesExhausted": 1, "ClassExhausted": null, "DimensionExhausted": {"memory": 1},
        "QuotaExhausted": null, "ResourcesExhausted": null, "ScoreMetaData": null,
        "AllocationTime": 21000, "CoalescedFailures": failures.saturating_sub(1),
    })
}

/// `command/agent/job_endpoint.go: regionForJob` → (request region, job region).
fn region_for_job(job: Option<&Obj>, query: &str, body: &str) -> (String, String) {
    let mut req = String::new();
    if !query.is_empty() {
        req = query.to_owned();
    }
    if !body.is_empty() {
        req = body.to_owned();
    }
    if req.is_empty()
        && let Some(r) = job.and_then(|j| get(j, "Region")).and_then(Value::as_str)
    {
        req = r.to_owned();
    }
    if req.is_empty() || req == "global" {
        req = AGENT_REGION.to_owned();
    }
    (req.clone(), req)
}

/// `namespaceForJob`: query > request body > job > `default`.
fn namespace_for_job(job: Option<&Obj>, query: &str, body: &str) -> String {
    if !query.is_empty() {
        return query.to_owned();
    }
    if !body.is_empty() {
        return body.to_owned();
    }
    match job
        .and_then(|j| get(j, "Namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) if !ns.is_empty() => ns.to_owned(),
        _ => "default".to_owned(),
    }
}

fn is_periodic_or_param(job: &Value) -> bool {
    !job["Periodic"].is_null()
        || (!job["ParameterizedJob"].is_null() && !job["Dispatched"].as_bool().unwrap_or(false))
}

/// The job without the fields `SpecChanged` ignores (§3).
fn spec_of(job: &Value) -> Value {
    let mut j = job.clone();
    if let Some(o) = j.as_object_mut() {
        for f in SERVER_FIELDS {
            o.remove(f);
        }
    }
    j
}

/// `validateJobUpdate` (§2.1 step 6).
fn validate_job_update(old: &Value, new: &Obj) -> Result<(), String> {
    let (ot, nt) = (
        old["Type"].as_str().unwrap_or(""),
        new["Type"].as_str().unwrap_or(""),
    );
    if ot != nt {
        return Err(format!("cannot update job from type {ot:?} to {nt:?}"));
    }
    let (op, np) = (!old["Periodic"].is_null(), !new["Periodic"].is_null());
    if op && !np {
        return Err("cannot update periodic job to being non-periodic".into());
    }
    if !op && np {
        return Err("cannot update non-periodic job to being periodic".into());
    }
    let (oa, na) = (
        !old["ParameterizedJob"].is_null(),
        !new["ParameterizedJob"].is_null(),
    );
    if oa && !na {
        return Err("cannot update parameterized job to being non-parameterized".into());
    }
    if !oa && na {
        return Err("cannot update non-parameterized job to being parameterized".into());
    }
    Ok(())
}

fn preserve(old: &Value, job: &mut Obj, counts: bool, resources: bool) {
    let Some(groups) = job.get_mut("TaskGroups").and_then(Value::as_array_mut) else {
        return;
    };
    for g in groups {
        let Some(og) = old["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["Name"] == g["Name"])
        else {
            continue;
        };
        if counts {
            g["Count"] = og["Count"].clone();
        }
        if resources && let Some(tasks) = g["Tasks"].as_array_mut() {
            for t in tasks {
                if let Some(ot) = og["Tasks"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|o| o["Name"] == t["Name"])
                {
                    t["Resources"] = ot["Resources"].clone();
                }
            }
        }
    }
}

/// `scheduler/util.go: tasksUpdated` in outline: does the group need new allocations?
fn tasks_updated(old_job: &Value, new_job: &Value, group: &str) -> bool {
    let find = |j: &Value| {
        j["TaskGroups"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|g| g["Name"] == group)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (a, b) = (find(old_job), find(new_job));
    for f in ["EphemeralDisk", "Networks", "Volumes", "Meta"] {
        if a[f] != b[f] {
            return true;
        }
    }
    if old_job["Meta"] != new_job["Meta"] {
        return true;
    }
    let tasks = |g: &Value| g["Tasks"].as_array().cloned().unwrap_or_default();
    let (at, bt) = (tasks(&a), tasks(&b));
    if at.len() != bt.len() {
        return true;
    }
    // Changes that Nomad applies in place.
    const IN_PLACE: [&str; 7] = [
        "KillTimeout",
        "Services",
        "Constraints",
        "Affinities",
        "RestartPolicy",
        "ShutdownDelay",
        "KillSignal",
    ];
    for t in &at {
        let Some(u) = bt.iter().find(|u| u["Name"] == t["Name"]) else {
            return true;
        };
        let (mut t, mut u) = (t.clone(), u.clone());
        for f in IN_PLACE {
            t[f] = Value::Null;
            u[f] = Value::Null;
        }
        if t != u {
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------------------------
// Decoding: Go's encoding/json, as far as a client can tell
// ---------------------------------------------------------------------------------------------

/// A field's JSON kind and Go type.
#[derive(Clone, Copy)]
enum K {
    Str,
    Int,
    Uint,
    Dur,
    Bool,
    StrList,
    StrMap,
    AnyMap,
    Any,
}

impl K {
    fn go_type(self) -> &'static str {
        match self {
            K::Str => "string",
            K::Int => "int",
            K::Uint => "uint64",
            K::Dur => "time.Duration",
            K::Bool => "bool",
            K::StrList => "[]string",
            K::StrMap => "map[string]string",
            K::AnyMap => "map[string]interface {}",
            K::Any => "interface {}",
        }
    }
}

/// Looks a key up as Go does: exact first, then case-insensitively. Null counts as absent.
fn get<'a>(o: &'a Obj, k: &str) -> Option<&'a Value> {
    o.get(k)
        .or_else(|| {
            o.iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

/// The request body as an object (`null` decodes to an empty request), or Go's error text.
fn decode_body(body: &[u8], go_type: &str) -> Result<Obj, String> {
    if body.is_empty() {
        return Err("Request body is empty".into());
    }
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            return "unexpected EOF".to_owned();
        }
        let col = e.column().saturating_sub(1);
        let line = body
            .split(|&b| b == b'\n')
            .nth(e.line().saturating_sub(1))
            .unwrap_or(&[]);
        let c = line.get(col).map(|&b| b as char).unwrap_or('?');
        format!("invalid character '{c}' looking for beginning of value")
    })?;
    match v {
        Value::Object(o) => Ok(o),
        Value::Null => Ok(Obj::new()),
        other => Err(format!(
            "json: cannot unmarshal {} into Go value of type {go_type}",
            value_kind(&other)
        )),
    }
}

fn value_kind(v: &Value) -> String {
    match v {
        Value::String(_) => "string".into(),
        Value::Number(n) if n.is_f64() => format!("number {n}"),
        Value::Number(_) => "number".into(),
        Value::Bool(_) => "bool".into(),
        Value::Array(_) => "array".into(),
        Value::Object(_) => "object".into(),
        Value::Null => "null".into(),
    }
}

/// Collects the first Go `UnmarshalTypeError` while the canonicaliser reads the request.
#[derive(Default)]
struct Dec {
    err: Option<String>,
    path: Vec<&'static str>,
}

impl Dec {
    fn fail(&mut self, st: &str, field: &str, got: &Value, ty: &str) {
        if self.err.is_some() {
            return;
        }
        let mut p: Vec<&str> = self.path.clone();
        p.push(field);
        self.err = Some(format!(
            "json: cannot unmarshal {} into Go struct field {st}.{} of type {ty}",
            value_kind(got),
            p.join(".")
        ));
    }

    /// A type-checked field value (None when absent, null or of the wrong type).
    fn val(&mut self, o: &Obj, st: &str, f: &'static str, k: K) -> Option<Value> {
        let v = get(o, f)?;
        let ok = match k {
            K::Str => v.is_string(),
            K::Bool => v.is_boolean(),
            K::Int | K::Dur => v.is_i64(),
            K::Uint => v.is_u64(),
            K::Any => true,
            K::AnyMap => v.is_object(),
            K::StrList => match v.as_array() {
                Some(a) => match a.iter().find(|e| !e.is_string() && !e.is_null()) {
                    Some(bad) => {
                        self.fail(st, f, bad, "string");
                        return None;
                    }
                    None => true,
                },
                None => false,
            },
            K::StrMap => match v.as_object() {
                Some(m) => match m.values().find(|e| !e.is_string() && !e.is_null()) {
                    Some(bad) => {
                        self.fail(st, f, bad, "string");
                        return None;
                    }
                    None => true,
                },
                None => false,
            },
        };
        if ok {
            Some(v.clone())
        } else {
            self.fail(st, f, v, k.go_type());
            None
        }
    }

    fn s(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<String> {
        self.val(o, st, f, K::Str)
            .and_then(|v| v.as_str().map(str::to_owned))
    }
    fn i(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<i64> {
        self.val(o, st, f, K::Int).and_then(|v| v.as_i64())
    }
    fn u(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<u64> {
        self.val(o, st, f, K::Uint).and_then(|v| v.as_u64())
    }
    fn dur(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<i64> {
        self.val(o, st, f, K::Dur).and_then(|v| v.as_i64())
    }
    fn b(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<bool> {
        self.val(o, st, f, K::Bool).and_then(|v| v.as_bool())
    }
    fn strs(&mut self, o: &Obj, st: &str, f: &'static str) -> Option<Vec<String>> {
        self.val(o, st, f, K::StrList).map(|v| {
            v.as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or("").to_owned())
                .collect()
        })
    }

    fn obj<'a>(&mut self, o: &'a Obj, st: &str, f: &'static str, ty: &str) -> Option<&'a Obj> {
        let v = get(o, f)?;
        match v.as_object() {
            Some(m) => Some(m),
            None => {
                self.fail(st, f, v, ty);
                None
            }
        }
    }

    fn list<'a>(&mut self, o: &'a Obj, st: &str, f: &'static str, elem: &str) -> Vec<&'a Obj> {
        let Some(v) = get(o, f) else {
            return Vec::new();
        };
        let Some(a) = v.as_array() else {
            self.fail(st, f, v, &format!("[]*{elem}"));
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in a {
            match e {
                Value::Object(m) => out.push(m),
                Value::Null => {}
                other => self.fail(st, f, other, elem),
            }
        }
        out
    }

    /// The present, type-checked fields of a nested struct.
    fn fields(&mut self, src: &Obj, st: &str, spec: &[(&'static str, K)]) -> Obj {
        let mut out = Obj::new();
        for &(f, k) in spec {
            if let Some(v) = self.val(src, st, f, k) {
                out.insert(f.into(), v);
            }
        }
        out
    }

    fn sub(
        &mut self,
        parent: &Obj,
        pst: &str,
        f: &'static str,
        st: &str,
        spec: &[(&'static str, K)],
    ) -> Option<Obj> {
        let o = self.obj(parent, pst, f, &format!("api.{st}"))?;
        self.path.push(f);
        let m = self.fields(o, st, spec);
        self.path.pop();
        Some(m)
    }
}

fn overlay(mut base: Obj, top: Option<&Obj>) -> Obj {
    if let Some(t) = top {
        for (k, v) in t {
            if !v.is_null() {
                base.insert(k.clone(), v.clone());
            }
        }
    }
    base
}

/// Empty arrays and objects come back as null (Go nil slices / maps).
fn nil_empty(v: Option<Value>) -> Value {
    match v {
        Some(Value::Array(a)) if a.is_empty() => Value::Null,
        Some(Value::Object(o)) if o.is_empty() => Value::Null,
        Some(v) => v,
        None => Value::Null,
    }
}

fn pass(o: &Obj, f: &str) -> Value {
    nil_empty(get(o, f).cloned())
}

fn obj(pairs: Vec<(&str, Value)>) -> Obj {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

const RESTART: &[(&str, K)] = &[
    ("Interval", K::Dur),
    ("Attempts", K::Int),
    ("Delay", K::Dur),
    ("Mode", K::Str),
    ("RenderTemplates", K::Bool),
];
const RESCHEDULE: &[(&str, K)] = &[
    ("Attempts", K::Int),
    ("Interval", K::Dur),
    ("Delay", K::Dur),
    ("DelayFunction", K::Str),
    ("MaxDelay", K::Dur),
    ("Unlimited", K::Bool),
];
const UPDATE: &[(&str, K)] = &[
    ("Stagger", K::Dur),
    ("MaxParallel", K::Int),
    ("HealthCheck", K::Str),
    ("MinHealthyTime", K::Dur),
    ("HealthyDeadline", K::Dur),
    ("ProgressDeadline", K::Dur),
    ("Canary", K::Int),
    ("AutoRevert", K::Bool),
    ("AutoPromote", K::Bool),
];
const MIGRATE: &[(&str, K)] = &[
    ("MaxParallel", K::Int),
    ("HealthCheck", K::Str),
    ("MinHealthyTime", K::Dur),
    ("HealthyDeadline", K::Dur),
];
const DISK: &[(&str, K)] = &[
    ("Sticky", K::Bool),
    ("Migrate", K::Bool),
    ("SizeMB", K::Int),
];
const LOG: &[(&str, K)] = &[
    ("MaxFiles", K::Int),
    ("MaxFileSizeMB", K::Int),
    ("Disabled", K::Bool),
];
const RESOURCES: &[(&str, K)] = &[
    ("CPU", K::Int),
    ("Cores", K::Int),
    ("MemoryMB", K::Int),
    ("MemoryMaxMB", K::Int),
    ("DiskMB", K::Int),
    ("IOPS", K::Int),
    ("SecretsMB", K::Int),
    ("Networks", K::Any),
    ("Devices", K::Any),
    ("NUMA", K::Any),
];
const TEMPLATE: &[(&str, K)] = &[
    ("SourcePath", K::Str),
    ("DestPath", K::Str),
    ("EmbeddedTmpl", K::Str),
    ("ChangeMode", K::Str),
    ("ChangeSignal", K::Str),
    ("ChangeScript", K::Any),
    ("Splay", K::Dur),
    ("Perms", K::Str),
    ("Uid", K::Int),
    ("Gid", K::Int),
    ("LeftDelim", K::Str),
    ("RightDelim", K::Str),
    ("Envvars", K::Bool),
    ("VaultGrace", K::Dur),
    ("Wait", K::Any),
    ("ErrMissingKey", K::Bool),
    ("Once", K::Bool),
];
const CONSTRAINT: &[(&str, K)] = &[
    ("LTarget", K::Str),
    ("RTarget", K::Str),
    ("Operand", K::Str),
];
const AFFINITY: &[(&str, K)] = &[
    ("LTarget", K::Str),
    ("RTarget", K::Str),
    ("Operand", K::Str),
    ("Weight", K::Int),
];
const IDENTITY: &[(&str, K)] = &[
    ("Name", K::Str),
    ("Audience", K::StrList),
    ("ChangeMode", K::Str),
    ("ChangeSignal", K::Str),
    ("Env", K::Bool),
    ("File", K::Bool),
    ("Filepath", K::Str),
    ("ServiceName", K::Str),
    ("TTL", K::Dur),
    ("ExtraClaims", K::StrMap),
];
const PERIODIC: &[(&str, K)] = &[
    ("Enabled", K::Bool),
    ("Spec", K::Str),
    ("Specs", K::StrList),
    ("SpecType", K::Str),
    ("ProhibitOverlap", K::Bool),
    ("TimeZone", K::Str),
];
const PARAMETERIZED: &[(&str, K)] = &[
    ("Payload", K::Str),
    ("MetaRequired", K::StrList),
    ("MetaOptional", K::StrList),
];

fn update_defaults() -> Obj {
    obj(vec![
        ("Stagger", json!(30 * SEC)),
        ("MaxParallel", json!(1)),
        ("HealthCheck", json!("checks")),
        ("MinHealthyTime", json!(10 * SEC)),
        ("HealthyDeadline", json!(300 * SEC)),
        ("ProgressDeadline", json!(600 * SEC)),
        ("AutoRevert", json!(false)),
        ("AutoPromote", json!(false)),
        ("Canary", json!(0)),
    ])
}

fn update_zero() -> Obj {
    obj(vec![
        ("Stagger", json!(0)),
        ("MaxParallel", json!(0)),
        ("HealthCheck", json!("")),
        ("MinHealthyTime", json!(0)),
        ("HealthyDeadline", json!(0)),
        ("ProgressDeadline", json!(0)),
        ("AutoRevert", json!(false)),
        ("AutoPromote", json!(false)),
        ("Canary", json!(0)),
    ])
}

fn restart_defaults(ty: &str) -> Obj {
    let batch = matches!(ty, "batch" | "sysbatch");
    obj(vec![
        ("Attempts", json!(if batch { 3 } else { 2 })),
        (
            "Interval",
            json!(if batch { 24 * 3600 * SEC } else { 1800 * SEC }),
        ),
        ("Delay", json!(15 * SEC)),
        ("Mode", json!("fail")),
        ("RenderTemplates", json!(false)),
    ])
}

fn reschedule_defaults(ty: &str) -> Option<Obj> {
    match ty {
        "system" | "sysbatch" => None,
        "batch" => Some(obj(vec![
            ("Attempts", json!(1)),
            ("Interval", json!(24 * 3600 * SEC)),
            ("Delay", json!(5 * SEC)),
            ("DelayFunction", json!("constant")),
            ("MaxDelay", json!(0)),
            ("Unlimited", json!(false)),
        ])),
        _ => Some(obj(vec![
            ("Attempts", json!(0)),
            ("Interval", json!(0)),
            ("Delay", json!(30 * SEC)),
            ("DelayFunction", json!("exponential")),
            ("MaxDelay", json!(3600 * SEC)),
            ("Unlimited", json!(true)),
        ])),
    }
}

fn migrate_defaults() -> Obj {
    obj(vec![
        ("MaxParallel", json!(1)),
        ("HealthCheck", json!("checks")),
        ("MinHealthyTime", json!(10 * SEC)),
        ("HealthyDeadline", json!(300 * SEC)),
    ])
}

/// The job as Nomad stores it: `api.Job.Canonicalize`, `ApiJobToStructJob`, the server-side
/// canonicaliser and admission mutators (§2.3, §8). Server-managed fields start zeroed.
fn canonical_job(d: &mut Dec, j: &Obj, namespace: &str, region: &str) -> Obj {
    const ST: &str = "Job";
    d.path.push("Job");
    let id = d.s(j, ST, "ID").unwrap_or_default();
    let name = d.s(j, ST, "Name").unwrap_or_else(|| id.clone());
    let ty = d.s(j, ST, "Type").unwrap_or_else(|| "service".into());
    let priority = match d.i(j, ST, "Priority") {
        None | Some(0) => 50,
        Some(p) => p,
    };
    let stop = d.b(j, ST, "Stop").unwrap_or(false);
    let all_at_once = d.b(j, ST, "AllAtOnce").unwrap_or(false);
    let mut datacenters = d.strs(j, ST, "Datacenters").unwrap_or_default();
    if datacenters.is_empty() {
        datacenters.push("*".into());
    }
    let node_pool = d
        .s(j, ST, "NodePool")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".into());
    let meta = nil_empty(d.val(j, ST, "Meta", K::StrMap));
    let consul_ns = d.s(j, ST, "ConsulNamespace").unwrap_or_default();
    let vault_ns = d.s(j, ST, "VaultNamespace").unwrap_or_default();
    // Read (type-checked) but overwritten: server-managed or request-level fields.
    for (f, k) in [
        ("Region", K::Str),
        ("Namespace", K::Str),
        ("ParentID", K::Str),
        ("Status", K::Str),
        ("StatusDescription", K::Str),
        ("Stable", K::Bool),
        ("Version", K::Uint),
        ("SubmitTime", K::Int),
        ("CreateIndex", K::Uint),
        ("ModifyIndex", K::Uint),
        ("JobModifyIndex", K::Uint),
        ("NomadTokenID", K::Str),
        ("ConsulToken", K::Str),
        ("VaultToken", K::Str),
        ("Dispatched", K::Bool),
        ("DispatchIdempotencyToken", K::Str),
    ] {
        d.val(j, ST, f, k);
    }
    let constraints = constraints(d, j, ST, "Constraints");
    let affinities = affinities(d, j, ST);
    let job_update = d.sub(j, ST, "Update", "UpdateStrategy", UPDATE);
    let job_migrate = d.sub(j, ST, "Migrate", "MigrateStrategy", MIGRATE);
    let job_resched = d.sub(j, ST, "Reschedule", "ReschedulePolicy", RESCHEDULE);
    let periodic = d
        .sub(j, ST, "Periodic", "PeriodicConfig", PERIODIC)
        .map(|p| {
            let mut p = overlay(
                obj(vec![
                    ("Enabled", json!(true)),
                    ("Spec", json!("")),
                    ("Specs", Value::Null),
                    ("SpecType", json!("cron")),
                    ("ProhibitOverlap", json!(false)),
                    ("TimeZone", json!("UTC")),
                ]),
                Some(&p),
            );
            let specs = nil_empty(p.remove("Specs"));
            p.insert("Specs".into(), specs);
            Value::Object(p)
        });
    let parameterized = d
        .sub(
            j,
            ST,
            "ParameterizedJob",
            "ParameterizedJobConfig",
            PARAMETERIZED,
        )
        .map(|p| {
            let mut p = overlay(
                obj(vec![
                    ("Payload", json!("optional")),
                    ("MetaRequired", Value::Null),
                    ("MetaOptional", Value::Null),
                ]),
                Some(&p),
            );
            for f in ["MetaRequired", "MetaOptional"] {
                let v = nil_empty(p.remove(f));
                p.insert(f.into(), v);
            }
            Value::Object(p)
        });
    let default_update = matches!(ty.as_str(), "service" | "system");
    // The job-level Update keeps only Stagger and MaxParallel (ApiJobToStructJob).
    let api_update = match &job_update {
        Some(u) => Some(overlay(update_defaults(), Some(u))),
        None if default_update => Some(update_defaults()),
        None => None,
    };
    let mut struct_update = update_zero();
    if let Some(u) = &api_update
        && u["MaxParallel"].as_i64().unwrap_or(0) > 0
    {
        struct_update.insert("Stagger".into(), u["Stagger"].clone());
        struct_update.insert("MaxParallel".into(), u["MaxParallel"].clone());
    }
    let group_srcs = d.list(j, ST, "TaskGroups", "api.TaskGroup");
    d.path.push("TaskGroups");
    let ctx = GroupCtx {
        ty: &ty,
        job_update: job_update.as_ref(),
        job_migrate: job_migrate.as_ref(),
        job_resched: job_resched.as_ref(),
    };
    let groups: Vec<Value> = group_srcs
        .into_iter()
        .map(|g| Value::Object(canonical_group(d, g, &ctx)))
        .collect();
    d.path.pop();
    let payload = pass(j, "Payload");
    let out = obj(vec![
        ("Stop", json!(stop)),
        ("Region", json!(region)),
        ("Namespace", json!(namespace)),
        ("ID", json!(id)),
        ("ParentID", json!("")),
        ("Name", json!(name)),
        ("Type", json!(ty)),
        ("Priority", json!(priority)),
        ("AllAtOnce", json!(all_at_once)),
        ("Datacenters", json!(datacenters)),
        ("NodePool", json!(node_pool)),
        ("Constraints", constraints),
        ("Affinities", affinities),
        ("Spreads", pass(j, "Spreads")),
        ("TaskGroups", Value::Array(groups)),
        ("Update", Value::Object(struct_update)),
        ("Multiregion", pass(j, "Multiregion")),
        ("Periodic", periodic.unwrap_or(Value::Null)),
        ("ParameterizedJob", parameterized.unwrap_or(Value::Null)),
        ("Dispatched", json!(false)),
        ("DispatchIdempotencyToken", json!("")),
        ("Payload", payload),
        ("Meta", meta),
        ("ConsulNamespace", json!(consul_ns)),
        ("VaultNamespace", json!(vault_ns)),
        ("NomadTokenID", json!("")),
        ("Status", json!("")),
        ("StatusDescription", json!("")),
        ("Stable", json!(false)),
        ("Version", json!(0)),
        ("SubmitTime", json!(0)),
        ("CreateIndex", json!(0)),
        ("ModifyIndex", json!(0)),
        ("JobModifyIndex", json!(0)),
        ("UI", pass(j, "UI")),
        ("VersionTag", pass(j, "VersionTag")),
    ]);
    d.path.pop();
    out
}

struct GroupCtx<'a> {
    ty: &'a str,
    job_update: Option<&'a Obj>,
    job_migrate: Option<&'a Obj>,
    job_resched: Option<&'a Obj>,
}

fn constraints(d: &mut Dec, o: &Obj, st: &str, f: &'static str) -> Value {
    let srcs = d.list(o, st, f, "api.Constraint");
    d.path.push(f);
    let base = obj(vec![
        ("LTarget", json!("")),
        ("RTarget", json!("")),
        ("Operand", json!("")),
    ]);
    let out: Vec<Value> = srcs
        .into_iter()
        .map(|c| {
            Value::Object(overlay(
                base.clone(),
                Some(&d.fields(c, "Constraint", CONSTRAINT)),
            ))
        })
        .collect();
    d.path.pop();
    nil_empty(Some(Value::Array(out)))
}

fn affinities(d: &mut Dec, o: &Obj, st: &str) -> Value {
    let srcs = d.list(o, st, "Affinities", "api.Affinity");
    d.path.push("Affinities");
    let base = obj(vec![
        ("LTarget", json!("")),
        ("RTarget", json!("")),
        ("Operand", json!("")),
        ("Weight", json!(50)),
    ]);
    let out: Vec<Value> = srcs
        .into_iter()
        .map(|c| {
            Value::Object(overlay(
                base.clone(),
                Some(&d.fields(c, "Affinity", AFFINITY)),
            ))
        })
        .collect();
    d.path.pop();
    nil_empty(Some(Value::Array(out)))
}

fn opt_dur(d: &mut Dec, o: &Obj, st: &str, f: &'static str) -> Value {
    d.dur(o, st, f).map(|v| json!(v)).unwrap_or(Value::Null)
}

fn canonical_group(d: &mut Dec, g: &Obj, ctx: &GroupCtx) -> Obj {
    const ST: &str = "TaskGroup";
    let ty = ctx.ty;
    let name = d.s(g, ST, "Name").unwrap_or_default();
    let scaling = pass(g, "Scaling");
    let count = d.i(g, ST, "Count").unwrap_or_else(|| {
        scaling
            .as_object()
            .and_then(|s| get(s, "Min"))
            .and_then(Value::as_i64)
            .unwrap_or(1)
    });
    let restart_src = d.sub(g, ST, "RestartPolicy", "RestartPolicy", RESTART);
    let restart = overlay(restart_defaults(ty), restart_src.as_ref());
    let resched_src = d.sub(g, ST, "ReschedulePolicy", "ReschedulePolicy", RESCHEDULE);
    let resched = match reschedule_defaults(ty) {
        Some(def) => Value::Object(overlay(overlay(def, ctx.job_resched), resched_src.as_ref())),
        None => resched_src.map(Value::Object).unwrap_or(Value::Null),
    };
    let disk_src = d.sub(g, ST, "EphemeralDisk", "EphemeralDisk", DISK);
    let disk = overlay(
        obj(vec![
            ("Sticky", json!(false)),
            ("SizeMB", json!(300)),
            ("Migrate", json!(false)),
        ]),
        disk_src.as_ref(),
    );
    let update_src = d.sub(g, ST, "Update", "UpdateStrategy", UPDATE);
    let update =
        if matches!(ty, "service" | "system") || ctx.job_update.is_some() || update_src.is_some() {
            Value::Object(overlay(
                overlay(update_defaults(), ctx.job_update),
                update_src.as_ref(),
            ))
        } else {
            Value::Null
        };
    let migrate_src = d.sub(g, ST, "Migrate", "MigrateStrategy", MIGRATE);
    let migrate = if ty == "service" || ctx.job_migrate.is_some() || migrate_src.is_some() {
        Value::Object(overlay(
            overlay(migrate_defaults(), ctx.job_migrate),
            migrate_src.as_ref(),
        ))
    } else {
        Value::Null
    };
    let meta = nil_empty(d.val(g, ST, "Meta", K::StrMap));
    let constraints = constraints(d, g, ST, "Constraints");
    let affinities = affinities(d, g, ST);
    let shutdown_delay = opt_dur(d, g, ST, "ShutdownDelay");
    let max_run = opt_dur(d, g, ST, "MaxRunDuration");
    let stop_after = opt_dur(d, g, ST, "StopAfterClientDisconnect");
    let max_disconnect = opt_dur(d, g, ST, "MaxClientDisconnect");
    let prevent = d.b(g, ST, "PreventRescheduleOnLost").unwrap_or(false);
    let task_srcs = d.list(g, ST, "Tasks", "api.Task");
    d.path.push("Tasks");
    let tasks: Vec<Value> = task_srcs
        .into_iter()
        .map(|t| Value::Object(canonical_task(d, t, &restart)))
        .collect();
    d.path.pop();
    obj(vec![
        ("Name", json!(name)),
        ("Count", json!(count)),
        ("Update", update),
        ("Migrate", migrate),
        ("Constraints", constraints),
        ("Scaling", scaling),
        ("RestartPolicy", Value::Object(restart)),
        ("Disconnect", pass(g, "Disconnect")),
        ("Tasks", Value::Array(tasks)),
        ("EphemeralDisk", Value::Object(disk)),
        ("Meta", meta),
        ("ReschedulePolicy", resched),
        ("Affinities", affinities),
        ("Spreads", pass(g, "Spreads")),
        ("Networks", pass(g, "Networks")),
        ("Consul", pass(g, "Consul")),
        ("Services", pass(g, "Services")),
        ("Volumes", pass(g, "Volumes")),
        ("ShutdownDelay", shutdown_delay),
        ("MaxRunDuration", max_run),
        ("StopAfterClientDisconnect", stop_after),
        ("MaxClientDisconnect", max_disconnect),
        ("PreventRescheduleOnLost", json!(prevent)),
    ])
}

fn canonical_task(d: &mut Dec, t: &Obj, group_restart: &Obj) -> Obj {
    const ST: &str = "Task";
    let name = d.s(t, ST, "Name").unwrap_or_default();
    let driver = d.s(t, ST, "Driver").unwrap_or_default();
    let user = d.s(t, ST, "User").unwrap_or_default();
    let config = nil_empty(d.val(t, ST, "Config", K::AnyMap));
    let env = nil_empty(d.val(t, ST, "Env", K::StrMap));
    let meta = nil_empty(d.val(t, ST, "Meta", K::StrMap));
    let res_src = d
        .sub(t, ST, "Resources", "Resources", RESOURCES)
        .unwrap_or_default();
    let cores = res_src.get("Cores").and_then(Value::as_i64);
    let cpu = res_src
        .get("CPU")
        .and_then(Value::as_i64)
        .unwrap_or(if cores.is_none() { 100 } else { 0 });
    let int = |f: &str, def: i64| res_src.get(f).and_then(Value::as_i64).unwrap_or(def);
    let resources = obj(vec![
        ("CPU", json!(cpu)),
        ("Cores", json!(cores.unwrap_or(0))),
        ("MemoryMB", json!(int("MemoryMB", 300))),
        ("MemoryMaxMB", json!(int("MemoryMaxMB", 0))),
        ("DiskMB", json!(int("DiskMB", 0))),
        ("IOPS", json!(int("IOPS", 0))),
        ("Networks", nil_empty(res_src.get("Networks").cloned())),
        ("Devices", nil_empty(res_src.get("Devices").cloned())),
        ("NUMA", nil_empty(res_src.get("NUMA").cloned())),
        ("SecretsMB", json!(int("SecretsMB", 0))),
    ]);
    let restart_src = d.sub(t, ST, "RestartPolicy", "RestartPolicy", RESTART);
    let restart = overlay(group_restart.clone(), restart_src.as_ref());
    let kill_timeout = d.dur(t, ST, "KillTimeout").unwrap_or(5 * SEC);
    let log_src = d.sub(t, ST, "LogConfig", "LogConfig", LOG);
    let log = overlay(
        obj(vec![
            ("MaxFiles", json!(10)),
            ("MaxFileSizeMB", json!(10)),
            ("Disabled", json!(false)),
        ]),
        log_src.as_ref(),
    );
    let tmpl_srcs = d.list(t, ST, "Templates", "api.Template");
    d.path.push("Templates");
    let templates: Vec<Value> = tmpl_srcs
        .into_iter()
        .map(|s| {
            let mut tm = overlay(
                obj(vec![
                    ("SourcePath", json!("")),
                    ("DestPath", json!("")),
                    ("EmbeddedTmpl", json!("")),
                    ("ChangeMode", json!("restart")),
                    ("ChangeSignal", json!("")),
                    ("ChangeScript", Value::Null),
                    ("Splay", json!(5 * SEC)),
                    ("Perms", json!("0644")),
                    ("Uid", Value::Null),
                    ("Gid", Value::Null),
                    ("LeftDelim", json!("{{")),
                    ("RightDelim", json!("}}")),
                    ("Envvars", json!(false)),
                    ("VaultGrace", json!(0)),
                    ("Wait", Value::Null),
                    ("ErrMissingKey", json!(false)),
                    ("Once", json!(false)),
                ]),
                Some(&d.fields(s, "Template", TEMPLATE)),
            );
            let sig = tm["ChangeSignal"].as_str().unwrap_or("").to_uppercase();
            tm.insert("ChangeSignal".into(), json!(sig));
            Value::Object(tm)
        })
        .collect();
    d.path.pop();
    let constraints = constraints(d, t, ST, "Constraints");
    let affinities = affinities(d, t, ST);
    let identity_src = d.sub(t, ST, "Identity", "WorkloadIdentity", IDENTITY);
    let mut identity = overlay(
        obj(vec![
            ("Name", json!("default")),
            ("Audience", json!(["nomadproject.io"])),
            ("ChangeMode", json!("")),
            ("ChangeSignal", json!("")),
            ("Env", json!(false)),
            ("File", json!(false)),
            ("Filepath", json!("")),
            ("ServiceName", json!("")),
            ("TTL", json!(0)),
            ("ExtraClaims", Value::Null),
        ]),
        identity_src.as_ref(),
    );
    let claims = nil_empty(identity.remove("ExtraClaims"));
    identity.insert("ExtraClaims".into(), claims);
    let lifecycle = match get(t, "Lifecycle") {
        Some(Value::Object(l))
            if get(l, "Hook")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty() =>
        {
            Value::Null
        }
        other => nil_empty(other.cloned()),
    };
    let leader = d.b(t, ST, "Leader").unwrap_or(false);
    let shutdown_delay = d.dur(t, ST, "ShutdownDelay").unwrap_or(0);
    let kill_signal = d.s(t, ST, "KillSignal").unwrap_or_default();
    let kind = d.s(t, ST, "Kind").unwrap_or_default();
    obj(vec![
        ("Name", json!(name)),
        ("Driver", json!(driver)),
        ("User", json!(user)),
        ("Config", config),
        ("Env", env),
        ("Services", pass(t, "Services")),
        ("Vault", pass(t, "Vault")),
        ("Secrets", pass(t, "Secrets")),
        ("Consul", pass(t, "Consul")),
        ("Templates", nil_empty(Some(Value::Array(templates)))),
        ("Constraints", constraints),
        ("Affinities", affinities),
        ("Resources", Value::Object(resources)),
        ("RestartPolicy", Value::Object(restart)),
        ("DispatchPayload", pass(t, "DispatchPayload")),
        ("Lifecycle", lifecycle),
        ("Meta", meta),
        ("KillTimeout", json!(kill_timeout)),
        ("LogConfig", Value::Object(log)),
        ("Artifacts", pass(t, "Artifacts")),
        ("Leader", json!(leader)),
        ("ShutdownDelay", json!(shutdown_delay)),
        ("VolumeMounts", pass(t, "VolumeMounts")),
        ("ScalingPolicies", pass(t, "ScalingPolicies")),
        ("KillSignal", json!(kill_signal)),
        ("Kind", json!(kind)),
        ("CSIPluginConfig", pass(t, "CSIPluginConfig")),
        ("Identity", Value::Object(identity)),
        ("Identities", pass(t, "Identities")),
        ("Actions", pass(t, "Actions")),
        ("Schedule", pass(t, "Schedule")),
    ])
}

// ---------------------------------------------------------------------------------------------
// Validation (§2.4): go-multierror text
// ---------------------------------------------------------------------------------------------

/// go-multierror's `ListFormatFunc`.
fn multierror(errs: &[String]) -> String {
    if errs.len() == 1 {
        return format!("1 error occurred:\n\t* {}\n\n", errs[0]);
    }
    let points: Vec<String> = errs.iter().map(|e| format!("* {e}")).collect();
    format!(
        "{} errors occurred:\n\t{}\n\n",
        errs.len(),
        points.join("\n\t")
    )
}

fn sv<'a>(v: &'a Value, f: &str) -> &'a str {
    v[f].as_str().unwrap_or("")
}

fn iv(v: &Value, f: &str) -> i64 {
    v[f].as_i64().unwrap_or(0)
}

fn arr<'a>(v: &'a Value, f: &str) -> Vec<&'a Value> {
    v[f].as_array().into_iter().flatten().collect()
}

/// `structs.Job.Validate` plus the `jobValidate` admission hook.
fn validate_job(job: &Obj) -> Vec<String> {
    let job = Value::Object(job.clone());
    let mut e: Vec<String> = Vec::new();
    let ty = sv(&job, "Type");
    if sv(&job, "Region").is_empty() {
        e.push("Missing job region".into());
    }
    let id = sv(&job, "ID");
    if id.is_empty() {
        e.push("Missing job ID".into());
    } else if id.contains(' ') {
        e.push("Job ID contains a space".into());
    } else if id.contains('\0') {
        e.push("Job ID contains a null character".into());
    }
    let name = sv(&job, "Name");
    if name.is_empty() {
        e.push("Missing job name".into());
    } else if name.contains('\0') {
        e.push("Job Name contains a null character".into());
    }
    if sv(&job, "Namespace").is_empty() {
        e.push("Job must be in a namespace".into());
    }
    match ty {
        "core" | "service" | "batch" | "system" | "sysbatch" => {}
        "" => e.push("Missing job type".into()),
        t => e.push(format!("Invalid job type: {t:?}")),
    }
    let dcs = arr(&job, "Datacenters");
    if dcs.is_empty() {
        e.push("Missing job datacenters".into());
    }
    for dc in dcs {
        if dc.as_str().unwrap_or("").is_empty() {
            e.push("Job datacenter must be non-empty string".into());
        }
    }
    let groups = arr(&job, "TaskGroups");
    if groups.is_empty() {
        e.push("Missing job task groups".into());
    }
    for (i, c) in arr(&job, "Constraints").into_iter().enumerate() {
        let ce = validate_constraint(c);
        if !ce.is_empty() {
            e.push(format!(
                "Constraint {} validation failed: {}",
                i + 1,
                multierror(&ce)
            ));
        }
    }
    if ty == "system" {
        if !job["Affinities"].is_null() {
            e.push("System jobs may not have an affinity block".into());
        }
        if !job["Spreads"].is_null() {
            e.push("System jobs may not have a spread block".into());
        }
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        let gname = sv(g, "Name");
        if gname.is_empty() {
            e.push(format!("Job task group {} missing name", i + 1));
        } else if let Some(first) = seen.get(gname) {
            e.push(format!(
                "Job task group {} redefines '{gname}' from group {}",
                i + 1,
                first + 1
            ));
        } else {
            seen.insert(gname, i);
        }
        if g["ShutdownDelay"].as_i64().is_some_and(|v| v < 0) {
            e.push("ShutdownDelay must be a positive value".into());
        }
        if ty == "system" && iv(g, "Count") > 1 {
            e.push(format!(
                "Job task group {gname} has count {}. Count cannot exceed 1 with system scheduler",
                iv(g, "Count")
            ));
        }
    }
    for g in &groups {
        let ge = validate_group(g, ty);
        if !ge.is_empty() {
            e.push(format!(
                "Task group {} validation failed: {}",
                sv(g, "Name"),
                multierror(&ge)
            ));
        }
    }
    if job["Periodic"]["Enabled"].as_bool().unwrap_or(false) && !matches!(ty, "batch" | "sysbatch")
    {
        e.push("Periodic can only be used with \"batch\" or \"sysbatch\" scheduler".into());
    }
    // The jobValidate admission hook.
    if ty == "core" {
        e.push("job type cannot be core".into());
    }
    if !job["Payload"].is_null() {
        e.push("job can't be submitted with a payload, only dispatched".into());
    }
    let priority = iv(&job, "Priority");
    if !(1..=100).contains(&priority) {
        e.push("job priority must be between [1, 100]".into());
    }
    e
}

fn validate_constraint(c: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let op = sv(c, "Operand");
    let rt = sv(c, "RTarget");
    if op.is_empty() {
        e.push("Missing constraint operand".into());
    }
    let mut need_l = true;
    match op {
        "distinct_hosts" => need_l = false,
        "set_contains_all" | "set_contains_any" | "set_contains" => {
            if rt.is_empty() {
                e.push("Set contains constraint requires an RTarget".into());
            }
        }
        "regexp" | "version" | "semver" | "distinct_property" => {}
        "is_set" | "is_not_set" => {
            if !rt.is_empty() {
                e.push(format!("Operator {op:?} does not support an RTarget"));
            }
        }
        "=" | "==" | "is" | "!=" | "not" | "<" | "<=" | ">" | ">=" => {
            if rt.is_empty() {
                e.push(format!("Operator {op:?} requires an RTarget"));
            }
        }
        other => e.push(format!("Unknown constraint type {other:?}")),
    }
    if need_l && sv(c, "LTarget").is_empty() {
        e.push("No LTarget provided but is required by constraint".into());
    }
    e
}

fn validate_group(g: &Value, ty: &str) -> Vec<String> {
    let mut e: Vec<String> = Vec::new();
    let name = sv(g, "Name");
    if name.is_empty() {
        e.push("Missing task group name".into());
    }
    if iv(g, "Count") < 0 {
        e.push("Task group count can't be negative".into());
    }
    let tasks = arr(g, "Tasks");
    if tasks.is_empty() {
        e.push("Missing tasks for task group".into());
    }
    for (i, c) in arr(g, "Constraints").into_iter().enumerate() {
        let ce = validate_constraint(c);
        if !ce.is_empty() {
            e.push(format!(
                "Constraint {} validation failed: {}",
                i + 1,
                multierror(&ce)
            ));
        }
    }
    let re = validate_restart(&g["RestartPolicy"]);
    if !re.is_empty() {
        e.push(multierror(&re));
    }
    if matches!(ty, "system" | "sysbatch") {
        if !g["ReschedulePolicy"].is_null() {
            e.push("System jobs should not have a reschedule policy".into());
        }
    } else if g["ReschedulePolicy"].is_null() {
        e.push(format!("Task Group {name} should have a reschedule policy"));
    }
    if !g["Update"].is_null() {
        if !matches!(ty, "service" | "system") {
            e.push(format!("Job type {ty:?} does not allow update block"));
        }
        let ue = validate_update(&g["Update"]);
        if !ue.is_empty() {
            e.push(multierror(&ue));
        }
    }
    if ty != "service" && !g["Migrate"].is_null() {
        e.push(format!("Job type {ty:?} does not allow migrate block"));
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut leaders = 0;
    for (i, t) in tasks.iter().enumerate() {
        let tname = sv(t, "Name");
        if tname.is_empty() {
            e.push(format!("Task {} missing name", i + 1));
        } else if let Some(first) = seen.get(tname) {
            e.push(format!(
                "Task {} redefines '{tname}' from task {}",
                i + 1,
                first + 1
            ));
        } else {
            seen.insert(tname, i);
        }
        if t["Leader"].as_bool().unwrap_or(false) {
            leaders += 1;
        }
    }
    if leaders > 1 {
        e.push("Only one task may be marked as leader".into());
    }
    if !tasks.is_empty() && tasks.iter().all(|t| !t["Lifecycle"].is_null()) {
        e.push(format!(
            "Task group {name} must have at least one main task"
        ));
    }
    for t in &tasks {
        let te = validate_task(t, g);
        if !te.is_empty() {
            e.push(format!(
                "Task {} validation failed: {}",
                sv(t, "Name"),
                multierror(&te)
            ));
        }
    }
    e
}

fn validate_restart(r: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if r.is_null() {
        return e;
    }
    let mode = sv(r, "Mode");
    if !matches!(mode, "delay" | "fail") {
        e.push(format!("Unsupported restart mode: {mode:?}"));
    }
    let attempts = iv(r, "Attempts");
    if attempts == 0 && mode != "fail" {
        e.push(format!(
            "Restart policy {mode:?} with {attempts} attempts is ambiguous"
        ));
    }
    let interval = iv(r, "Interval");
    if interval < 5 * SEC {
        e.push(format!(
            "Interval can not be less than {} (got {})",
            go_duration(5 * SEC),
            go_duration(interval)
        ));
    }
    let delay = iv(r, "Delay");
    if attempts.saturating_mul(delay) > interval {
        e.push(format!(
            "Nomad can't restart the TaskGroup {attempts} times in an interval of {} with a delay of {}",
            go_duration(interval),
            go_duration(delay)
        ));
    }
    e
}

fn validate_update(u: &Value) -> Vec<String> {
    let mut e = Vec::new();
    let hc = sv(u, "HealthCheck");
    if !matches!(hc, "checks" | "task_states" | "manual") {
        e.push(format!("Invalid health check given: {hc:?}"));
    }
    let mp = iv(u, "MaxParallel");
    if mp < 0 {
        e.push(format!("Max parallel can not be less than zero: {mp} < 0"));
    }
    let canary = iv(u, "Canary");
    if canary < 0 {
        e.push(format!(
            "Canary count can not be less than zero: {canary} < 0"
        ));
    }
    if canary == 0 && u["AutoPromote"].as_bool().unwrap_or(false) {
        e.push("Auto Promote requires a Canary count greater than zero".into());
    }
    let (min, healthy, progress) = (
        iv(u, "MinHealthyTime"),
        iv(u, "HealthyDeadline"),
        iv(u, "ProgressDeadline"),
    );
    if min < 0 {
        e.push(format!(
            "Minimum healthy time may not be less than zero: {}",
            go_duration(min)
        ));
    }
    if healthy <= 0 {
        e.push(format!(
            "Healthy deadline must be greater than zero: {}",
            go_duration(healthy)
        ));
    }
    if progress < 0 {
        e.push(format!(
            "Progress deadline must be zero or greater: {}",
            go_duration(progress)
        ));
    }
    if min >= healthy {
        e.push(format!(
            "Minimum healthy time must be less than healthy deadline: {} > {}",
            go_duration(min),
            go_duration(healthy)
        ));
    }
    if progress != 0 && healthy >= progress {
        e.push(format!(
            "Healthy deadline must be less than progress deadline: {} > {}",
            go_duration(healthy),
            go_duration(progress)
        ));
    }
    let stagger = iv(u, "Stagger");
    if stagger <= 0 {
        e.push(format!(
            "Stagger must be greater than zero: {}",
            go_duration(stagger)
        ));
    }
    e
}

fn validate_task(t: &Value, g: &Value) -> Vec<String> {
    let mut e: Vec<String> = Vec::new();
    let name = sv(t, "Name");
    if name.is_empty() {
        e.push("Missing task name".into());
    } else if name == "alloc" {
        e.push("Task cannot be named \"alloc\"".into());
    }
    if name.contains('/') || name.contains('\\') {
        e.push("Task name cannot include slashes".into());
    } else if name.contains('\0') {
        e.push("Task name cannot include null characters".into());
    }
    if sv(t, "Driver").is_empty() {
        e.push("Missing task driver".into());
    }
    if iv(t, "KillTimeout") < 0 {
        e.push("KillTimeout must be a positive value".into());
    }
    if iv(t, "ShutdownDelay") < 0 {
        e.push("ShutdownDelay must be a positive value".into());
    }
    let r = &t["Resources"];
    let mut re: Vec<String> = Vec::new();
    let (cpu, cores, mem) = (iv(r, "CPU"), iv(r, "Cores"), iv(r, "MemoryMB"));
    if cores > 0 && cpu > 0 {
        re.push("Task can only ask for 'cpu' or 'cores' resource, not both.".into());
    }
    let mut min: Vec<String> = Vec::new();
    if cpu < 1 && cores == 0 {
        min.push(format!("minimum CPU value is 1; got {cpu}"));
    }
    if mem < 10 {
        min.push(format!("minimum MemoryMB value is 10; got {mem}"));
    }
    if !min.is_empty() {
        re.push(multierror(&min));
    }
    if iv(r, "DiskMB") > 0 {
        re.push(
            "Task can't ask for disk resources, they have to be specified at the task group level."
                .into(),
        );
    }
    let max = iv(r, "MemoryMaxMB");
    if max != 0 && max < mem {
        re.push(format!(
            "MemoryMaxMB value ({max}) should be larger than MemoryMB value ({mem})"
        ));
    }
    if !re.is_empty() {
        e.push(multierror(&re));
    }
    let l = &t["LogConfig"];
    let mut le: Vec<String> = Vec::new();
    let (files, size) = (iv(l, "MaxFiles"), iv(l, "MaxFileSizeMB"));
    if files < 1 {
        le.push(format!("minimum number of files is 1; got {files}"));
    }
    if size < 1 {
        le.push(format!("minimum file size is 1MB; got {size}"));
    }
    if !le.is_empty() {
        e.push(multierror(&le));
    }
    let disk = iv(&g["EphemeralDisk"], "SizeMB");
    if disk <= files * size {
        e.push(format!(
            "log storage ({} MB) must be less than requested disk capacity ({disk} MB)",
            files * size
        ));
    }
    let mut dests: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, tm) in arr(t, "Templates").into_iter().enumerate() {
        let te = validate_template(tm);
        if !te.is_empty() {
            e.push(format!(
                "Template {} validation failed: {}",
                i + 1,
                multierror(&te)
            ));
        }
        let dest = sv(tm, "DestPath");
        if let Some(other) = dests.get(dest) {
            e.push(format!(
                "Template {} has same destination as {other}",
                i + 1
            ));
        } else {
            dests.insert(dest, i + 1);
        }
    }
    e
}

fn validate_template(t: &Value) -> Vec<String> {
    let mut e = Vec::new();
    if sv(t, "SourcePath").is_empty() && sv(t, "EmbeddedTmpl").is_empty() {
        e.push("Must specify a source path or have an embedded template".into());
    }
    let dest = sv(t, "DestPath");
    if dest.is_empty() {
        e.push("Must specify a destination for the template".into());
    }
    // escapingfs.PathEscapesAllocViaRelative("task", dest)
    let mut depth: i64 = 1;
    let mut escaped = false;
    for part in dest.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    escaped = true;
                }
            }
            _ => depth += 1,
        }
    }
    if escaped {
        e.push("destination escapes allocation directory".into());
    }
    match sv(t, "ChangeMode") {
        "noop" | "restart" => {}
        "signal" => {
            if sv(t, "ChangeSignal").is_empty() {
                e.push("Must specify signal value when change mode is signal".into());
            }
            if t["Envvars"].as_bool().unwrap_or(false) {
                e.push("cannot use signals with env var templates".into());
            }
        }
        "script" => {
            if t["ChangeScript"].is_null() {
                e.push(
                    "must specify change script configuration value when change mode is script"
                        .into(),
                );
            }
        }
        _ => e.push(
            "Invalid change mode. Must be one of the following: noop, signal, script, restart"
                .into(),
        ),
    }
    if iv(t, "Splay") < 0 {
        e.push("Must specify positive splay value".into());
    }
    let perms = sv(t, "Perms");
    if !perms.is_empty() && !u32::from_str_radix(perms, 8).is_ok_and(|p| p <= 0o7777) {
        e.push(format!(
            "Failed to parse {perms:?} as octal: strconv.ParseUint: parsing {perms:?}: invalid syntax"
        ));
    }
    e
}

/// `structs.VariableDecrypted.Validate` and `ValidatePath`.
fn validate_variable(ns: &str, path: &str, items: &Obj) -> Result<(), String> {
    if ns == "*" {
        return Err("can not target wildcard (\"*\")namespace".into());
    }
    let size: usize = items
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if size > MAX_VARIABLE_SIZE {
        return Err("variables are limited to 64KiB in total size".into());
    }
    let valid = !path.is_empty()
        && path.len() <= 128
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '~' | '/'));
    if !valid {
        return Err(format!("invalid path {path:?}"));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts[0] != "nomad" {
        return Ok(());
    }
    if parts.len() == 1 {
        return Err("\"nomad\" is a reserved top-level directory path, but you may write variables to \"nomad/jobs\", \"nomad/job-templates\", or below".into());
    }
    match parts[1] {
        "jobs" | "sentinel" => Ok(()),
        "job-templates" if parts.len() == 3 => Ok(()),
        _ => Err("only paths at \"nomad/jobs\" or \"nomad/job-templates\" and below are valid paths when using \"nomad\" as the top-level path".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Plan diff (structs/diff.go in outline) and annotations (scheduler/annotate.go)
// ---------------------------------------------------------------------------------------------

const NONE: &str = "None";
const ADDED: &str = "Added";
const DELETED: &str = "Deleted";
const EDITED: &str = "Edited";

struct FieldDiff {
    ty: &'static str,
    name: String,
    old: String,
    new: String,
    annotations: Vec<String>,
}

struct ObjDiff {
    ty: &'static str,
    name: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
}

struct TaskDiff {
    ty: &'static str,
    name: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
    annotations: Vec<String>,
}

struct GroupDiff {
    ty: &'static str,
    name: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
    tasks: Vec<TaskDiff>,
    updates: Option<BTreeMap<&'static str, u64>>,
}

struct JobDiff {
    ty: &'static str,
    id: String,
    fields: Vec<FieldDiff>,
    objects: Vec<ObjDiff>,
    groups: Vec<GroupDiff>,
}

fn nil_or<T>(v: &[T], f: impl Fn(&T) -> Value) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        Value::Array(v.iter().map(f).collect())
    }
}

fn strings_or_nil(v: &[String]) -> Value {
    if v.is_empty() { Value::Null } else { json!(v) }
}

impl FieldDiff {
    fn to_json(&self) -> Value {
        json!({"Type": self.ty, "Name": self.name, "Old": self.old, "New": self.new,
               "Annotations": strings_or_nil(&self.annotations)})
    }
}

impl ObjDiff {
    fn to_json(&self) -> Value {
        json!({"Type": self.ty, "Name": self.name,
               "Fields": nil_or(&self.fields, FieldDiff::to_json),
               "Objects": nil_or(&self.objects, ObjDiff::to_json)})
    }
}

impl JobDiff {
    fn to_json(&self) -> Value {
        let tasks = |t: &TaskDiff| {
            json!({"Type": t.ty, "Name": t.name,
                   "Fields": nil_or(&t.fields, FieldDiff::to_json),
                   "Objects": nil_or(&t.objects, ObjDiff::to_json),
                   "Annotations": strings_or_nil(&t.annotations)})
        };
        let groups = |g: &GroupDiff| {
            json!({"Type": g.ty, "Name": g.name,
                   "Fields": nil_or(&g.fields, FieldDiff::to_json),
                   "Objects": nil_or(&g.objects, ObjDiff::to_json),
                   "Tasks": nil_or(&g.tasks, tasks),
                   "Updates": g.updates.as_ref().map(|u| json!(u)).unwrap_or(Value::Null)})
        };
        json!({"Type": self.ty, "ID": self.id,
               "Fields": nil_or(&self.fields, FieldDiff::to_json),
               "Objects": nil_or(&self.objects, ObjDiff::to_json),
               "TaskGroups": nil_or(&self.groups, groups)})
    }
}

/// Object-valued fields that are Go maps (flattened as `Name[key]`), not structs.
fn is_map_field(k: &str) -> bool {
    matches!(k, "Meta" | "Env" | "ExtraClaims" | "Volumes" | "Config")
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `flatmap.Flatten(obj, filter, primitiveOnly=true)`.
fn flat_primitive(o: Option<&Obj>, filter: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(o) = o else { return out };
    for (k, v) in o {
        if filter.contains(&k.as_str()) {
            continue;
        }
        if let Some(s) = scalar(v) {
            out.insert(k.clone(), s);
        } else if let (Value::Object(m), true) = (v, is_map_field(k)) {
            for (mk, mv) in m {
                if let Some(s) = scalar(mv) {
                    out.insert(format!("{k}[{mk}]"), s);
                }
            }
        }
    }
    out
}

/// `flatmap.Flatten(obj, nil, false)` for driver config.
fn flat_full(v: &Value, prefix: &str, out: &mut BTreeMap<String, String>) {
    let sub = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}[{k}]")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flat_full(v, &sub(k), out);
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                flat_full(v, &format!("{prefix}[{i}]"), out);
            }
        }
        Value::Null => {
            out.insert(prefix.to_owned(), String::new());
        }
        other => {
            out.insert(prefix.to_owned(), scalar(other).unwrap_or_default());
        }
    }
}

fn field_diff(old: &str, new: &str, name: &str, contextual: bool) -> Option<FieldDiff> {
    let (ty, o, n) = if old == new {
        if !contextual {
            return None;
        }
        (NONE, old, new)
    } else if old.is_empty() {
        (ADDED, "", new)
    } else if new.is_empty() {
        (DELETED, old, "")
    } else {
        (EDITED, old, new)
    };
    Some(FieldDiff {
        ty,
        name: name.to_owned(),
        old: o.to_owned(),
        new: n.to_owned(),
        annotations: Vec::new(),
    })
}

fn field_diffs(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    contextual: bool,
) -> Vec<FieldDiff> {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    names
        .into_iter()
        .filter_map(|k| {
            let o = old.get(k).map(String::as_str).unwrap_or("");
            let n = new.get(k).map(String::as_str).unwrap_or("");
            field_diff(o, n, k, contextual)
        })
        .collect()
}

fn string_set_diff(
    old: &[String],
    new: &[String],
    name: &str,
    contextual: bool,
) -> Option<ObjDiff> {
    let (os, ns): (BTreeSet<&String>, BTreeSet<&String>) =
        (old.iter().collect(), new.iter().collect());
    let mut fields = Vec::new();
    let (mut added, mut removed) = (false, false);
    for k in &os {
        if !ns.contains(k) {
            fields.extend(field_diff(k, "", name, contextual));
            removed = true;
        } else if contextual {
            fields.extend(field_diff(k, k, name, contextual));
        }
    }
    for k in &ns {
        if !os.contains(k) {
            fields.extend(field_diff("", k, name, contextual));
            added = true;
        }
    }
    fields.sort_by(|a, b| a.name.cmp(&b.name));
    let ty = match (added, removed) {
        (true, true) => EDITED,
        (true, false) => ADDED,
        (false, true) => DELETED,
        (false, false) if fields.is_empty() => return None,
        _ => NONE,
    };
    Some(ObjDiff {
        ty,
        name: name.to_owned(),
        fields,
        objects: Vec::new(),
    })
}

fn singular(k: &str) -> String {
    match k {
        "Affinities" => "Affinity".into(),
        "Identities" => "Identity".into(),
        "ReservedPorts" => "Static Port".into(),
        "DynamicPorts" => "Dynamic Port".into(),
        k => k.strip_suffix('s').unwrap_or(k).to_owned(),
    }
}

fn strings_of(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(scalar)
        .collect()
}

/// Diffs of the struct- and list-valued fields of two objects (generic `Objects`).
fn objects_of(
    old: Option<&Obj>,
    new: Option<&Obj>,
    skip: &[&str],
    contextual: bool,
) -> Vec<ObjDiff> {
    let keys: BTreeSet<&String> = old
        .into_iter()
        .flat_map(|o| o.keys())
        .chain(new.into_iter().flat_map(|o| o.keys()))
        .collect();
    let mut out = Vec::new();
    for k in keys {
        if skip.contains(&k.as_str()) || is_map_field(k) {
            continue;
        }
        let ov = old.and_then(|o| o.get(k)).filter(|v| !v.is_null());
        let nv = new.and_then(|o| o.get(k)).filter(|v| !v.is_null());
        let sample = nv.or(ov);
        match sample {
            Some(Value::Object(_)) => out.extend(object_diff(ov, nv, k, contextual)),
            Some(Value::Array(a)) => {
                let objects = a.iter().any(Value::is_object)
                    || ov
                        .and_then(Value::as_array)
                        .is_some_and(|a| a.iter().any(Value::is_object));
                let empty = Vec::new();
                let oa = ov.and_then(Value::as_array).unwrap_or(&empty);
                let na = nv.and_then(Value::as_array).unwrap_or(&empty);
                if objects {
                    out.extend(set_diff(oa, na, &singular(k), contextual));
                } else if let Some(d) = string_set_diff(
                    &strings_of(ov.unwrap_or(&Value::Null)),
                    &strings_of(nv.unwrap_or(&Value::Null)),
                    k,
                    contextual,
                ) && d.ty != NONE
                {
                    out.push(d);
                }
            }
            _ => {}
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// `primitiveObjectDiff`, recursing into nested blocks.
fn object_diff(
    old: Option<&Value>,
    new: Option<&Value>,
    name: &str,
    contextual: bool,
) -> Option<ObjDiff> {
    let (o, n) = (
        old.and_then(Value::as_object),
        new.and_then(Value::as_object),
    );
    if o.is_none() && n.is_none() {
        return None;
    }
    let fields = field_diffs(&flat_primitive(o, &[]), &flat_primitive(n, &[]), contextual);
    let objects = objects_of(o, n, &[], contextual);
    let changed = |t: &str| fields.iter().any(|f| f.ty == t);
    let ty = if o.is_none() {
        ADDED
    } else if n.is_none() {
        DELETED
    } else if changed(EDITED) || (changed(ADDED) && changed(DELETED)) || !objects.is_empty() {
        EDITED
    } else if changed(ADDED) {
        ADDED
    } else if changed(DELETED) {
        DELETED
    } else {
        return None;
    };
    if ty != EDITED && fields.iter().all(|f| f.ty == NONE) && objects.is_empty() {
        return None;
    }
    Some(ObjDiff {
        ty,
        name: name.to_owned(),
        fields,
        objects,
    })
}

/// `primitiveObjectSetDiff`: an element that changed is one Deleted plus one Added object.
fn set_diff(old: &[Value], new: &[Value], name: &str, contextual: bool) -> Vec<ObjDiff> {
    let mut out = Vec::new();
    for o in old.iter().filter(|o| !new.contains(o)) {
        out.extend(object_diff(Some(o), None, name, contextual));
    }
    for n in new.iter().filter(|n| !old.contains(n)) {
        out.extend(object_diff(None, Some(n), name, contextual));
    }
    out
}

const JOB_FILTER: [&str; 13] = [
    "ID",
    "Status",
    "StatusDescription",
    "Version",
    "Stable",
    "CreateIndex",
    "ModifyIndex",
    "JobModifyIndex",
    "Update",
    "SubmitTime",
    "NomadTokenID",
    "VaultToken",
    "Payload",
];

/// `Job.Diff(other, contextual=true)` as `Job.Plan` calls it.
fn job_diff(old: Option<&Obj>, new: &Obj) -> JobDiff {
    let fields = field_diffs(
        &flat_primitive(old, &JOB_FILTER),
        &flat_primitive(Some(new), &JOB_FILTER),
        false,
    );
    let mut objects = Vec::new();
    let dcs = |o: Option<&Obj>| o.map(|o| strings_of(&o["Datacenters"])).unwrap_or_default();
    if let Some(d) = string_set_diff(&dcs(old), &dcs(Some(new)), "Datacenters", false)
        && d.ty != NONE
    {
        objects.push(d);
    }
    let mut skip: Vec<&str> = JOB_FILTER.to_vec();
    skip.extend(["TaskGroups", "Datacenters"]);
    objects.extend(objects_of(old, Some(new), &skip, true));
    let groups = group_diffs(
        old.map(|o| arr_obj(o, "TaskGroups")).unwrap_or_default(),
        arr_obj(new, "TaskGroups"),
    );
    let ty = if old.is_none() {
        ADDED
    } else if fields.iter().any(|f| f.ty != NONE)
        || objects.iter().any(|o| o.ty != NONE)
        || groups.iter().any(|g| g.ty != NONE)
    {
        EDITED
    } else {
        NONE
    };
    JobDiff {
        ty,
        id: new["ID"].as_str().unwrap_or("").to_owned(),
        fields,
        objects,
        groups,
    }
}

fn arr_obj<'a>(o: &'a Obj, f: &str) -> Vec<&'a Obj> {
    o.get(f)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object)
        .collect()
}

fn by_name<'a>(v: &[&'a Obj]) -> BTreeMap<String, &'a Obj> {
    v.iter()
        .map(|o| (o["Name"].as_str().unwrap_or("").to_owned(), *o))
        .collect()
}

fn group_diffs(old: Vec<&Obj>, new: Vec<&Obj>) -> Vec<GroupDiff> {
    let (om, nm) = (by_name(&old), by_name(&new));
    let names: BTreeSet<&String> = om.keys().chain(nm.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (o, n) = (om.get(name).copied(), nm.get(name).copied());
            let ty = match (o, n) {
                (None, _) => ADDED,
                (_, None) => DELETED,
                (Some(a), Some(b)) if a == b => NONE,
                _ => EDITED,
            };
            GroupDiff {
                ty,
                name: name.clone(),
                fields: field_diffs(
                    &flat_primitive(o, &["Name"]),
                    &flat_primitive(n, &["Name"]),
                    false,
                ),
                objects: objects_of(o, n, &["Name", "Tasks"], true),
                tasks: task_diffs(
                    o.map(|o| arr_obj(o, "Tasks")).unwrap_or_default(),
                    n.map(|n| arr_obj(n, "Tasks")).unwrap_or_default(),
                ),
                updates: None,
            }
        })
        .collect()
}

fn task_diffs(old: Vec<&Obj>, new: Vec<&Obj>) -> Vec<TaskDiff> {
    let (om, nm) = (by_name(&old), by_name(&new));
    let names: BTreeSet<&String> = om.keys().chain(nm.keys()).collect();
    names
        .into_iter()
        .map(|name| {
            let (o, n) = (om.get(name).copied(), nm.get(name).copied());
            let ty = match (o, n) {
                (None, _) => ADDED,
                (_, None) => DELETED,
                (Some(a), Some(b)) if a == b => NONE,
                _ => EDITED,
            };
            let filter = ["Name", "Config"];
            let mut objects = Vec::new();
            let config = |x: Option<&Obj>| {
                x.and_then(|x| x.get("Config"))
                    .cloned()
                    .unwrap_or(Value::Null)
            };
            let (oc, nc) = (config(o), config(n));
            if oc != nc {
                let (mut of, mut nf) = (BTreeMap::new(), BTreeMap::new());
                if !oc.is_null() {
                    flat_full(&oc, "", &mut of);
                }
                if !nc.is_null() {
                    flat_full(&nc, "", &mut nf);
                }
                objects.push(ObjDiff {
                    ty: if oc.is_null() {
                        ADDED
                    } else if nc.is_null() {
                        DELETED
                    } else {
                        EDITED
                    },
                    name: "Config".into(),
                    fields: field_diffs(&of, &nf, true),
                    objects: Vec::new(),
                });
            }
            objects.extend(objects_of(o, n, &filter, true));
            objects.sort_by(|a, b| a.name.cmp(&b.name));
            TaskDiff {
                ty,
                name: name.clone(),
                fields: field_diffs(
                    &flat_primitive(o, &filter),
                    &flat_primitive(n, &filter),
                    true,
                ),
                objects,
                annotations: Vec::new(),
            }
        })
        .collect()
}

/// `scheduler.Annotate`: group Updates, Count and task annotations.
fn annotate(diff: &mut JobDiff, plan: &BTreeMap<String, GroupPlan>) {
    for g in &mut diff.groups {
        if let Some(p) = plan.get(&g.name) {
            let mut u = BTreeMap::new();
            for (k, n) in [
                ("ignore", p.ignore),
                ("create", p.place.len()),
                ("destroy", p.stop.len()),
                ("in-place update", p.inplace.len()),
                ("create/destroy update", p.destructive.len()),
            ] {
                if n > 0 {
                    u.insert(k, n as u64);
                }
            }
            g.updates = Some(u);
        }
        for f in g.fields.iter_mut().filter(|f| f.name == "Count") {
            let (o, n) = (
                f.old.parse::<i64>().unwrap_or(0),
                f.new.parse::<i64>().unwrap_or(0),
            );
            if o < n {
                f.annotations.push("forces create".into());
            } else if n < o {
                f.annotations.push("forces destroy".into());
            }
        }
        let parent = g.ty;
        for t in &mut g.tasks {
            if t.ty == NONE {
                continue;
            }
            if parent == ADDED || t.ty == ADDED {
                t.annotations.push("forces create".into());
                continue;
            }
            if parent == DELETED || t.ty == DELETED {
                t.annotations.push("forces destroy".into());
                continue;
            }
            let destructive = t
                .fields
                .iter()
                .any(|f| f.ty != NONE && f.name != "KillTimeout")
                || t.objects
                    .iter()
                    .any(|o| o.ty != NONE && !matches!(o.name.as_str(), "Service" | "Constraint"));
            t.annotations.push(
                if destructive {
                    "forces create/destroy update"
                } else {
                    "forces in-place update"
                }
                .into(),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small Go-compatible helpers
// ---------------------------------------------------------------------------------------------

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Nomad's `uuid.Generate`: 16 random bytes in the 8-4-4-4-12 layout.
fn uuid() -> String {
    let b: [u8; 16] = rand::random();
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration` (nanoseconds).
fn parse_go_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let num: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += num * mult;
    }
    Some(if neg { -(total as i64) } else { total as i64 })
}

/// Go's `time.Duration.String`.
fn go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let u = ns.unsigned_abs();
    let frac = |v: u64, div: u64| {
        let (w, f) = (v / div, v % div);
        if f == 0 {
            w.to_string()
        } else {
            let digits = div.to_string().len() - 1;
            let fs = format!("{f:0digits$}");
            format!("{w}.{}", fs.trim_end_matches('0'))
        }
    };
    let s = if u < 1_000 {
        format!("{u}ns")
    } else if u < 1_000_000 {
        format!("{}µs", frac(u, 1_000))
    } else if u < 1_000_000_000 {
        format!("{}ms", frac(u, 1_000_000))
    } else {
        let h = u / 3_600_000_000_000;
        let m = (u % 3_600_000_000_000) / 60_000_000_000;
        let secs = frac(u % 60_000_000_000, 1_000_000_000);
        if h > 0 {
            format!("{h}h{m}m{secs}s")
        } else if m > 0 {
            format!("{m}m{secs}s")
        } else {
            format!("{secs}s")
        }
    };
    if ns < 0 { format!("-{s}") } else { s }
}

/// RFC 3339 with nanoseconds, UTC.
fn rfc3339(ns: i64) -> String {
    let (secs, nanos) = (ns.div_euclid(SEC), ns.rem_euclid(SEC));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{nanos:09}Z",
        sod / 3_600,
        sod % 3_600 / 60,
        sod % 60
    )
}
