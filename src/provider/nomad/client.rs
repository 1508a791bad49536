//! A small typed client for the parts of Nomad's HTTP API tend uses (reference/nomad-http-api.md):
//! jobs (register with check-and-set, read, plan, deregister, summary), Variables (read,
//! write with `cas`, delete), and the token's own ACL (token/self, its roles and policies). Job bodies stay `serde_json::Value`; only what tend reads is typed.
//!
//! Every request carries the token (`X-Nomad-Token`, marked sensitive so no layer logs it) and
//! the namespace / region as query parameters. Failures come back as [`ApiError`] with a class:
//! connection failures and 5xx are Transient (and retried here with capped exponential backoff),
//! EnforceIndex and `cas` conflicts are Conflict, 403 / 400 / validation errors are Permanent.
//!
//! Must not log or put into an error anything from a request body (a Variable's items are
//! secrets); only methods, paths and Nomad's own error text.
//!
//! Upstream (hashicorp/nomad at aa026cc9, as reference/nomad-http-api.md read it): status codes
//! from `command/agent/http.go` `wrap` (a `CodedError` keeps its code, `Permission denied` /
//! `ACL token not found` are 403, anything else is 500), the token header from `parseToken`
//! (`X-Nomad-Token`, else `Authorization: Bearer`); the agent's 400 checks from
//! `command/agent/job_endpoint.go` `jobUpdate` / `jobPlan`; EnforceIndex failures found
//! anywhere in the text as `command/job_run.go` does (`enforceIndexRegex`); the passing 500s
//! from `nomad/structs/errors.go` and hashicorp/raft's errors; Variables' `cas` and 409 bodies
//! from `command/agent/variable_endpoint.go` `variableUpsert` and the state store's
//! `varSetCASTxn`; the ACL reads from `nomad/acl_endpoint.go` `ResolveToken`, `GetPolicy`,
//! `GetRoleByID`.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Once};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_json::json;

use crate::provider::{ErrorClass, ProviderError};
use crate::value::Sensitive;

use super::acl::{PolicyDoc, Role, TokenSelf};

/// What `GET /v1/acl/token/self` says of the token tend sends.
#[derive(Debug)]
pub enum TokenLookup {
    /// 400 `ACL support disabled`: every request is allowed.
    AclDisabled,
    /// `ACL token not found`: the secret is unknown, or tend sends none (anonymous).
    Unknown,
    Token(TokenSelf),
}

/// Characters kept as they are in one URL path segment (RFC 3986 unreserved).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The prefix of every EnforceIndex failure (`command/job_run.go` matches it the same way).
const ENFORCE_INDEX: &str = "Enforcing job modify index";

/// How to reach one Nomad cluster, read from a `nomad` Credential.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    /// `http(s)://host:port`, without a trailing slash.
    pub address: String,
    pub token: Option<Sensitive>,
    pub region: Option<String>,
    pub namespace: Option<String>,
    /// PEM: when set, the only roots trusted (like `NOMAD_CACERT`); otherwise the platform's.
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<Sensitive>,
}

/// Retry policy for Transient failures within one action.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
    pub times: usize,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(200),
            max: Duration::from_secs(2),
            times: 4,
        }
    }
}

/// A failed request: its class, the HTTP status when there was one, and a message free of
/// secrets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub class: ErrorClass,
    pub status: Option<u16>,
    pub message: String,
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        self.status == Some(404)
    }

    fn new(class: ErrorClass, status: Option<u16>, message: impl Into<String>) -> Self {
        ApiError {
            class,
            status,
            message: message.into(),
        }
    }
}

impl From<ApiError> for ProviderError {
    fn from(e: ApiError) -> Self {
        ProviderError {
            class: e.class,
            message: e.message,
        }
    }
}

/// Class and message of a non-success answer, from its status and Nomad's plain-text body
/// (reference §1 "Error format", §2.2, §7). `what` names the action (`register job "web"`).
pub fn classify(what: &str, status: u16, body: &str) -> ApiError {
    let text = body.trim_end();
    let (class, message) = match status {
        403 => (
            ErrorClass::Permanent,
            format!(
                "{what}: permission denied: check the nomad credential's token (Nomad said: {text})"
            ),
        ),
        400 => (ErrorClass::Permanent, format!("{what}: {text}")),
        404 => (ErrorClass::Permanent, format!("{what}: not found ({text})")),
        409 => (
            ErrorClass::Conflict,
            format!("{what}: changed in Nomad at the same time (check-and-set failed)"),
        ),
        429 => (
            ErrorClass::Transient,
            format!("{what}: Nomad answered 429: {text}"),
        ),
        // The official CLI looks for the phrase anywhere (`command/job_run.go`): the server may
        // wrap it (`rpc error: Enforcing job modify index …`).
        500 if text.contains(ENFORCE_INDEX) => (
            ErrorClass::Conflict,
            format!("{what}: the job changed in Nomad since tend read it ({text}): plan again"),
        ),
        500 if is_validation_error(text) => (ErrorClass::Permanent, format!("{what}: {text}")),
        // Nomad answers 500 for every server-side error without a code (`command/agent/http.go`
        // `wrap`: no CodedError → 500), mutator and hook refusals included; only the known
        // passing conditions are worth retrying.
        500 if !is_transient_500(text) => (
            ErrorClass::Permanent,
            format!("{what}: Nomad refused it: {text}"),
        ),
        s if s >= 500 => (
            ErrorClass::Transient,
            format!("{what}: Nomad answered {s}: {text}"),
        ),
        s => (
            ErrorClass::Permanent,
            format!("{what}: Nomad answered {s}: {text}"),
        ),
    };
    ApiError::new(class, Some(status), message)
}

/// Whether an uncoded 500 is a passing condition: no leader or one changing (`nomad/structs/
/// errors.go` `errNoLeader`, `errNotReadyForConsistentReads`; hashicorp/raft `ErrLeadershipLost`,
/// `ErrNotLeader`, `ErrEnqueueTimeout`), RPC timeouts and dropped RPC connections, rate limits.
fn is_transient_500(text: &str) -> bool {
    const PASSING: &[&str] = &[
        "No cluster leader",
        "Not ready to serve consistent reads",
        "leadership lost",
        "node is not the leader",
        "timed out enqueuing operation",
        "i/o timeout",
        "context deadline exceeded",
        "rate limit",
        "connection refused",
        "connection reset",
        "rpc error: EOF",
    ];
    PASSING.iter().any(|p| text.contains(p))
}

/// Whether a 500's text is a refusal that retrying cannot fix: a go-multierror validation block
/// (`1 error occurred:\n\t* …`), a forbidden job update, or a bad parameter (reference §2.1,
/// §2.4, §6, §7).
fn is_validation_error(text: &str) -> bool {
    let first = text.lines().next().unwrap_or_default();
    let multierror = first
        .split_once(' ')
        .is_some_and(|(n, rest)| n.parse::<u32>().is_ok() && rest.starts_with("error"))
        && first.ends_with("occurred:");
    multierror
        || text.contains("validation failed")
        || text.starts_with("cannot update job")
        || text.starts_with("Failed to parse value of")
        || text.contains("nonexistent namespace")
}

/// Replace every occurrence of a secret in `text` with `(sensitive)`.
pub fn redact(text: &str, secrets: &[&Sensitive]) -> String {
    let mut out = text.to_owned();
    for s in secrets {
        if !s.expose().is_empty() && out.contains(s.expose()) {
            out = out.replace(s.expose(), crate::value::SENSITIVE);
        }
    }
    out
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// What tend reads of a stored job (`GET /v1/job/:id`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobInfo {
    #[serde(rename = "ID", deserialize_with = "null_default")]
    pub id: String,
    #[serde(deserialize_with = "null_default")]
    pub namespace: String,
    #[serde(deserialize_with = "null_default")]
    pub r#type: String,
    #[serde(deserialize_with = "null_default")]
    pub version: u64,
    #[serde(deserialize_with = "null_default")]
    pub create_index: u64,
    #[serde(deserialize_with = "null_default")]
    pub job_modify_index: u64,
    #[serde(deserialize_with = "null_default")]
    pub stop: bool,
    #[serde(deserialize_with = "null_default")]
    pub status: String,
    #[serde(deserialize_with = "null_default")]
    pub task_groups: Vec<GroupInfo>,
}

/// A task group's name and count.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct GroupInfo {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub count: i64,
}

/// `PUT /v1/jobs` answer.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RegisterResponse {
    #[serde(rename = "EvalID", deserialize_with = "null_default")]
    pub eval_id: String,
    #[serde(deserialize_with = "null_default")]
    pub job_modify_index: u64,
    #[serde(deserialize_with = "null_default")]
    pub warnings: String,
}

/// `GET /v1/evaluation/:id` (reference §4, Evaluations): how far the scheduler got, and the
/// deployment it made or used (`DeploymentID`, empty when none).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Evaluation {
    #[serde(deserialize_with = "null_default")]
    pub status: String,
    #[serde(deserialize_with = "null_default")]
    pub status_description: String,
    #[serde(rename = "DeploymentID", deserialize_with = "null_default")]
    pub deployment_id: String,
}

/// A deployment (`api/deployments.go` `Deployment`), as `GET /v1/deployment/:id` and
/// `GET /v1/job/:id/deployment` answer it.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Deployment {
    #[serde(rename = "ID", deserialize_with = "null_default")]
    pub id: String,
    #[serde(deserialize_with = "null_default")]
    pub job_version: u64,
    #[serde(deserialize_with = "null_default")]
    pub job_create_index: u64,
    /// `running`, `successful`, `failed`, `cancelled`, `paused`, `pending`, `blocked`,
    /// `initializing`, `unblocking` (`nomad/structs/deployment.go`).
    #[serde(deserialize_with = "null_default")]
    pub status: String,
    #[serde(deserialize_with = "null_default")]
    pub status_description: String,
    #[serde(deserialize_with = "null_default")]
    pub task_groups: BTreeMap<String, DeploymentState>,
}

/// One group's progress in a deployment (`api/deployments.go` `DeploymentState`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentState {
    #[serde(deserialize_with = "null_default")]
    pub desired_total: u64,
    #[serde(deserialize_with = "null_default")]
    pub placed_allocs: u64,
    #[serde(deserialize_with = "null_default")]
    pub healthy_allocs: u64,
    #[serde(deserialize_with = "null_default")]
    pub unhealthy_allocs: u64,
}

/// `POST /v1/job/:id/plan` answer (reference §5).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlanResponse {
    pub diff: Option<JobDiff>,
    #[serde(rename = "FailedTGAllocs", deserialize_with = "null_default")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    #[serde(deserialize_with = "null_default")]
    pub job_modify_index: u64,
    #[serde(deserialize_with = "null_default")]
    pub warnings: String,
}

/// The top of a plan's diff.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDiff {
    #[serde(deserialize_with = "null_default")]
    pub r#type: String,
    #[serde(rename = "ID", deserialize_with = "null_default")]
    pub id: String,
    #[serde(deserialize_with = "null_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_default")]
    pub task_groups: Vec<TaskGroupDiff>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroupDiff {
    #[serde(deserialize_with = "null_default")]
    pub r#type: String,
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_default")]
    pub tasks: Vec<TaskDiff>,
    #[serde(deserialize_with = "null_default")]
    pub updates: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskDiff {
    #[serde(deserialize_with = "null_default")]
    pub r#type: String,
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_default")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "null_default")]
    pub annotations: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ObjectDiff {
    #[serde(deserialize_with = "null_default")]
    pub r#type: String,
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "null_default")]
    pub objects: Vec<ObjectDiff>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct FieldDiff {
    #[serde(deserialize_with = "null_default")]
    pub r#type: String,
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(deserialize_with = "null_default")]
    pub old: String,
    #[serde(deserialize_with = "null_default")]
    pub new: String,
    #[serde(deserialize_with = "null_default")]
    pub annotations: Vec<String>,
}

/// Why the scheduler could not place a group's allocations (the parts worth showing).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocMetric {
    #[serde(deserialize_with = "null_default")]
    pub nodes_evaluated: u64,
    #[serde(deserialize_with = "null_default")]
    pub nodes_filtered: u64,
    #[serde(deserialize_with = "null_default")]
    pub nodes_exhausted: u64,
    #[serde(deserialize_with = "null_default")]
    pub nodes_available: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_default")]
    pub class_filtered: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_default")]
    pub constraint_filtered: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_default")]
    pub class_exhausted: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_default")]
    pub dimension_exhausted: BTreeMap<String, u64>,
    #[serde(deserialize_with = "null_default")]
    pub quota_exhausted: Vec<String>,
    #[serde(deserialize_with = "null_default")]
    pub coalesced_failures: u64,
}

/// `GET /v1/job/:id/summary`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobSummary {
    #[serde(deserialize_with = "null_default")]
    pub summary: BTreeMap<String, GroupSummary>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct GroupSummary {
    #[serde(deserialize_with = "null_default")]
    pub queued: u64,
    #[serde(deserialize_with = "null_default")]
    pub starting: u64,
    #[serde(deserialize_with = "null_default")]
    pub running: u64,
    #[serde(deserialize_with = "null_default")]
    pub failed: u64,
    #[serde(deserialize_with = "null_default")]
    pub complete: u64,
    #[serde(deserialize_with = "null_default")]
    pub lost: u64,
}

/// One element of `GET /v1/job/:id/allocations`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocStub {
    #[serde(rename = "ID", deserialize_with = "null_default")]
    pub id: String,
    #[serde(deserialize_with = "null_default")]
    pub task_group: String,
    #[serde(deserialize_with = "null_default")]
    pub desired_status: String,
    #[serde(deserialize_with = "null_default")]
    pub client_status: String,
    #[serde(deserialize_with = "null_default")]
    pub job_version: u64,
}

/// A Nomad Variable. Items are secrets: `Debug` shows `(sensitive)` for each value.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Variable {
    pub namespace: String,
    pub path: String,
    pub modify_index: u64,
    pub items: BTreeMap<String, Sensitive>,
}

impl<'de> Deserialize<'de> for Variable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "PascalCase", default)]
        #[derive(Default)]
        struct Raw {
            #[serde(deserialize_with = "null_default")]
            namespace: String,
            #[serde(deserialize_with = "null_default")]
            path: String,
            #[serde(deserialize_with = "null_default")]
            modify_index: u64,
            #[serde(deserialize_with = "null_default")]
            items: BTreeMap<String, String>,
        }
        let raw = Raw::deserialize(d)?;
        Ok(Variable {
            namespace: raw.namespace,
            path: raw.path,
            modify_index: raw.modify_index,
            items: raw
                .items
                .into_iter()
                .map(|(k, v)| (k, Sensitive::new(v)))
                .collect(),
        })
    }
}

/// Where a request goes inside the cluster.
#[derive(Clone, Copy, Debug)]
pub struct Scope<'a> {
    pub namespace: &'a str,
    pub region: Option<&'a str>,
}

/// One cluster's HTTP client. Cheap to clone (the connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    address: Arc<str>,
    backoff: Backoff,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

/// Install ring as the process's rustls crypto provider once (reqwest is built with
/// `rustls-no-provider`, so it uses whatever is installed; ring is what the postgres provider
/// already uses, and needs no C toolchain beyond what ring itself builds).
fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one is used, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Client {
    /// A client for `endpoint`. Fails (Permanent) on an unusable address or TLS material.
    pub fn new(endpoint: &Endpoint, backoff: Backoff) -> Result<Client, ApiError> {
        install_crypto_provider();
        let address = normalize_address(&endpoint.address)?;
        let mut headers = HeaderMap::new();
        if let Some(token) = &endpoint.token {
            let mut v = HeaderValue::from_str(token.expose()).map_err(|_| {
                ApiError::new(
                    ErrorClass::Permanent,
                    None,
                    "the nomad credential's token is not a valid HTTP header value",
                )
            })?;
            v.set_sensitive(true);
            headers.insert("X-Nomad-Token", v);
        }
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("tend/", env!("CARGO_PKG_VERSION")));
        let tls_error = |what: &str, e: reqwest::Error| {
            ApiError::new(
                ErrorClass::Permanent,
                None,
                format!(
                    "the nomad credential's {what} is not usable: {}",
                    causes(&e)
                ),
            )
        };
        if let Some(ca) = &endpoint.ca_cert {
            let certs = reqwest::Certificate::from_pem_bundle(ca.as_bytes())
                .map_err(|e| tls_error("ca_cert", e))?;
            if certs.is_empty() {
                return Err(ApiError::new(
                    ErrorClass::Permanent,
                    None,
                    "the nomad credential's ca_cert holds no PEM certificate",
                ));
            }
            builder = builder.tls_certs_only(certs);
        }
        match (&endpoint.client_cert, &endpoint.client_key) {
            (Some(cert), Some(key)) => {
                let pem = zeroize::Zeroizing::new(format!("{cert}\n{}", key.expose()));
                let identity = reqwest::Identity::from_pem(pem.as_bytes())
                    .map_err(|e| tls_error("client_cert / client_key", e))?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            _ => {
                return Err(ApiError::new(
                    ErrorClass::Permanent,
                    None,
                    "the nomad credential needs both client_cert and client_key, or neither",
                ));
            }
        }
        let with_identity = endpoint.client_cert.is_some();
        let http = builder.build().map_err(|e| {
            let what = if with_identity {
                "the nomad credential's client_cert / client_key are not usable"
            } else {
                "cannot set up an HTTP client for Nomad"
            };
            ApiError::new(
                ErrorClass::Permanent,
                None,
                format!("{what}: {}", causes(&e)),
            )
        })?;
        Ok(Client {
            http,
            address: Arc::from(address),
            backoff,
        })
    }

    /// `GET /v1/job/:id`; `None` on 404.
    pub async fn read_job(&self, scope: Scope<'_>, id: &str) -> Result<Option<JobInfo>, ApiError> {
        let what = format!("read job {id:?}");
        let path = format!("/v1/job/{}", seg(id));
        optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )
    }

    /// `PUT /v1/jobs` with check-and-set: `job_modify_index` 0 means "only if it does not exist".
    pub async fn register(
        &self,
        scope: Scope<'_>,
        job: &serde_json::Value,
        job_modify_index: u64,
    ) -> Result<RegisterResponse, ApiError> {
        let what = format!("register job {:?}", job_id(job));
        let body = json!({
            "Job": job,
            "EnforceIndex": true,
            "JobModifyIndex": job_modify_index,
        });
        self.json(
            Request::new(Method::PUT, "/v1/jobs", scope, &what),
            Some(&body),
        )
        .await
    }

    /// `POST /v1/job/:id/plan` with `Diff: true` (a dry run; nothing is stored).
    pub async fn plan(
        &self,
        scope: Scope<'_>,
        job: &serde_json::Value,
    ) -> Result<PlanResponse, ApiError> {
        let id = job_id(job);
        let what = format!("plan job {id:?}");
        let path = format!("/v1/job/{}/plan", seg(id));
        let body = json!({ "Job": job, "Diff": true, "PolicyOverride": false });
        self.json(Request::new(Method::POST, &path, scope, &what), Some(&body))
            .await
    }

    /// `DELETE /v1/job/:id?purge=`. Nomad answers 200 for an unknown job; a 404 is tolerated too.
    pub async fn deregister(
        &self,
        scope: Scope<'_>,
        id: &str,
        purge: bool,
    ) -> Result<(), ApiError> {
        let what = format!("deregister job {id:?}");
        let path = format!("/v1/job/{}", seg(id));
        let purge = if purge { "true" } else { "false" };
        let query = [("purge", purge)];
        let req = Request::new(Method::DELETE, &path, scope, &what).query(&query);
        let r: Result<serde_json::Value, ApiError> = self.json(req, None).await;
        optional(r).map(|_| ())
    }

    /// `GET /v1/job/:id/summary`; `None` on 404.
    pub async fn summary(
        &self,
        scope: Scope<'_>,
        id: &str,
    ) -> Result<Option<JobSummary>, ApiError> {
        let what = format!("read the summary of job {id:?}");
        let path = format!("/v1/job/{}/summary", seg(id));
        optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )
    }

    /// `GET /v1/job/:id/allocations` (`[]` for an unknown job).
    pub async fn allocations(
        &self,
        scope: Scope<'_>,
        id: &str,
    ) -> Result<Vec<AllocStub>, ApiError> {
        let what = format!("list the allocations of job {id:?}");
        let path = format!("/v1/job/{}/allocations", seg(id));
        let r: Option<Option<Vec<AllocStub>>> = optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )?;
        Ok(r.flatten().unwrap_or_default())
    }

    /// `GET /v1/evaluation/:id`; `None` on 404.
    pub async fn evaluation(
        &self,
        scope: Scope<'_>,
        id: &str,
    ) -> Result<Option<Evaluation>, ApiError> {
        let what = format!("read evaluation {id:?}");
        let path = format!("/v1/evaluation/{}", seg(id));
        optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )
    }

    /// `GET /v1/job/:id/deployment`: the latest deployment of the job (`null`: none).
    pub async fn latest_deployment(
        &self,
        scope: Scope<'_>,
        job: &str,
    ) -> Result<Option<Deployment>, ApiError> {
        let what = format!("read the latest deployment of job {job:?}");
        let path = format!("/v1/job/{}/deployment", seg(job));
        let r: Option<Option<Deployment>> = optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )?;
        Ok(r.flatten())
    }

    /// `GET /v1/deployment/:id`; `None` on 404.
    pub async fn deployment(
        &self,
        scope: Scope<'_>,
        id: &str,
    ) -> Result<Option<Deployment>, ApiError> {
        let what = format!("read deployment {id:?}");
        let path = format!("/v1/deployment/{}", seg(id));
        optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )
    }

    /// `GET /v1/var/:path`; `None` on 404.
    pub async fn read_variable(
        &self,
        scope: Scope<'_>,
        path: &str,
    ) -> Result<Option<Variable>, ApiError> {
        let what = format!("read Nomad Variable {path:?}");
        let path = var_path(path);
        let bytes = optional(
            self.send(Request::new(Method::GET, &path, scope, &what))
                .await,
        )?;
        bytes.map(|b| decode_secret(&b, &what)).transpose()
    }

    /// `PUT /v1/var/:path?cas=N`: `cas` 0 creates only if absent, N updates only if the
    /// variable's ModifyIndex is N. A failed check is a Conflict.
    pub async fn write_variable(
        &self,
        scope: Scope<'_>,
        path: &str,
        items: &BTreeMap<String, Sensitive>,
        cas: u64,
    ) -> Result<Variable, ApiError> {
        let what = format!("write Nomad Variable {path:?}");
        let json_items: serde_json::Map<String, serde_json::Value> = items
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.expose().to_owned())))
            .collect();
        let body = serde_json::to_vec(&json!({
            "Namespace": scope.namespace,
            "Path": path,
            "Items": json_items,
        }))
        .map_err(|e| {
            ApiError::new(
                ErrorClass::Permanent,
                None,
                format!("{what}: cannot encode: {e}"),
            )
        })?;
        let cas = cas.to_string();
        let secrets: Vec<&Sensitive> = items.values().collect();
        let bytes = self
            .send(Request {
                method: Method::PUT,
                path: &var_path(path),
                scope,
                query: &[("cas", cas.as_str())],
                body: Some(zeroize::Zeroizing::new(body)),
                what: &what,
                secrets: &secrets,
            })
            .await?;
        decode_secret(&bytes, &what)
    }

    /// `DELETE /v1/var/:path` (idempotent: a missing variable is fine).
    pub async fn delete_variable(&self, scope: Scope<'_>, path: &str) -> Result<(), ApiError> {
        let what = format!("delete Nomad Variable {path:?}");
        let r = self
            .send(Request::new(Method::DELETE, &var_path(path), scope, &what))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/acl/token/self`: what the cluster says of tend's token (`ResolveToken`).
    pub async fn token_self(&self, scope: Scope<'_>) -> Result<TokenLookup, ApiError> {
        let what = "read tend's own ACL token";
        match self
            .send(Request::new(Method::GET, "/v1/acl/token/self", scope, what))
            .await
        {
            // The answer carries the token's secret: a decode error must not quote it.
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(TokenLookup::Token)
                .map_err(|_| {
                    ApiError::new(
                        ErrorClass::Permanent,
                        None,
                        format!("{what}: Nomad's answer is not an ACL token"),
                    )
                }),
            Err(e) if e.status == Some(400) && e.message.contains("ACL support disabled") => {
                Ok(TokenLookup::AclDisabled)
            }
            Err(e)
                if matches!(e.status, Some(403 | 404))
                    && e.message.contains("ACL token not found") =>
            {
                Ok(TokenLookup::Unknown)
            }
            Err(e) => Err(e),
        }
    }

    /// `GET /v1/acl/policy/:name`; `None` on 404 (`ACL policy not found`).
    pub async fn acl_policy(
        &self,
        scope: Scope<'_>,
        name: &str,
    ) -> Result<Option<PolicyDoc>, ApiError> {
        let what = format!("read the ACL policy {name:?}");
        let path = format!("/v1/acl/policy/{}", seg(name));
        optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )
    }

    /// `GET /v1/acl/role/:id`; `None` on 404 (`ACL role not found`).
    pub async fn acl_role(&self, scope: Scope<'_>, id: &str) -> Result<Option<Role>, ApiError> {
        let what = format!("read the ACL role {id:?}");
        let path = format!("/v1/acl/role/{}", seg(id));
        optional(
            self.json(Request::new(Method::GET, &path, scope, &what), None)
                .await,
        )
    }

    async fn json<T: DeserializeOwned>(
        &self,
        mut req: Request<'_>,
        body: Option<&serde_json::Value>,
    ) -> Result<T, ApiError> {
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| {
                ApiError::new(
                    ErrorClass::Permanent,
                    None,
                    format!("{}: cannot encode: {e}", req.what),
                )
            })?;
            req.body = Some(zeroize::Zeroizing::new(bytes));
        }
        let what = req.what;
        let bytes = self.send(req).await?;
        decode(&bytes, what)
    }

    /// Send a request, retrying Transient failures with capped exponential backoff.
    async fn send(&self, req: Request<'_>) -> Result<Vec<u8>, ApiError> {
        let policy = ExponentialBuilder::default()
            .with_min_delay(self.backoff.min)
            .with_max_delay(self.backoff.max)
            .with_max_times(self.backoff.times)
            .with_jitter();
        let retries = std::sync::atomic::AtomicUsize::new(0);
        let result = (|| self.send_once(&req))
            .retry(policy)
            .when(|e: &ApiError| e.class == ErrorClass::Transient)
            .notify(|e: &ApiError, after: Duration| {
                retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(
                    method = %req.method,
                    path = req.path,
                    error = %e,
                    retry_in_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
                    "nomad request failed; retrying"
                );
            })
            .await;
        result.map_err(|mut e| {
            let retries = retries.load(std::sync::atomic::Ordering::Relaxed);
            if retries > 0 {
                e.message
                    .push_str(&format!(" (gave up after {} attempts)", retries + 1));
            }
            e
        })
    }

    async fn send_once(&self, req: &Request<'_>) -> Result<Vec<u8>, ApiError> {
        let url = format!("{}{}", self.address, req.path);
        let mut params: Vec<(&str, &str)> = vec![("namespace", req.scope.namespace)];
        if let Some(region) = req.scope.region {
            params.push(("region", region));
        }
        params.extend_from_slice(req.query);
        let mut http = self.http.request(req.method.clone(), &url).query(&params);
        if let Some(b) = &req.body {
            http = http
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_vec());
        }
        let what = req.what;
        let resp = http
            .send()
            .await
            .map_err(|e| transport_error(what, &self.address, &e))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(what, &self.address, &e))?;
        tracing::debug!(method = %req.method, path = req.path, status = status.as_u16(), "nomad request");
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        // Error bodies are Nomad's plain text; a 409 from the Variables API is a JSON variable,
        // which may hold the current items: never show it.
        let text = if status == StatusCode::CONFLICT {
            String::new()
        } else {
            redact(&String::from_utf8_lossy(&bytes), req.secrets)
        };
        Err(classify(what, status.as_u16(), &text))
    }
}

/// One request: where it goes, what it carries, how to name it in errors, and which secrets
/// its body holds (redacted from any text that comes back).
struct Request<'a> {
    method: Method,
    path: &'a str,
    scope: Scope<'a>,
    query: &'a [(&'a str, &'a str)],
    body: Option<zeroize::Zeroizing<Vec<u8>>>,
    what: &'a str,
    secrets: &'a [&'a Sensitive],
}

impl<'a> Request<'a> {
    fn new(method: Method, path: &'a str, scope: Scope<'a>, what: &'a str) -> Self {
        Request {
            method,
            path,
            scope,
            query: &[],
            body: None,
            what,
            secrets: &[],
        }
    }

    fn query(mut self, query: &'a [(&'a str, &'a str)]) -> Self {
        self.query = query;
        self
    }
}

fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    // `DELETE` answers may be empty (204): decode those as JSON null.
    let bytes: &[u8] = if bytes.is_empty() { b"null" } else { bytes };
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            ErrorClass::Permanent,
            None,
            format!("{what}: Nomad's answer is not what tend expected: {e}"),
        )
    })
}

/// Like [`decode`] for answers that hold secrets: the decoder's message may quote the input, so
/// it is not shown.
fn decode_secret<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|_| {
        ApiError::new(
            ErrorClass::Permanent,
            None,
            format!("{what}: Nomad's answer is not a Variable"),
        )
    })
}

/// An error with its chain of causes ("builder error: … : InconsistentKeys(KeyMismatch)"). The
/// causes of TLS setup errors name what is wrong, never key material.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = c.source();
    }
    s
}

/// `Ok(None)` for a 404, the value otherwise.
fn optional<T>(r: Result<T, ApiError>) -> Result<Option<T>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Connection-level failures: TLS and certificate problems are Permanent (retrying cannot fix
/// them), everything else (refused, reset, timed out, DNS) is Transient.
fn transport_error(what: &str, address: &str, e: &reqwest::Error) -> ApiError {
    let mut tls = false;
    // The root cause says what happened ("Connection refused (os error 111)"); reqwest's own
    // outer text only repeats the URL.
    let mut detail = e.to_string();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            tls = true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            // `io::Error::source()` skips the error it wraps (hyper-rustls wraps rustls's
            // error in an `Other` around an `InvalidData`): look inside by hand.
            let mut inner: Option<&std::io::Error> = Some(io);
            while let Some(i) = inner {
                if i.kind() == std::io::ErrorKind::InvalidData {
                    tls = true;
                }
                let wrapped = i.get_ref();
                if wrapped.is_some_and(|w| w.downcast_ref::<rustls::Error>().is_some()) {
                    tls = true;
                }
                inner = wrapped.and_then(|w| w.downcast_ref::<std::io::Error>());
            }
        }
        detail = cause.to_string();
        source = cause.source();
    }
    if e.is_builder() || tls {
        ApiError::new(
            ErrorClass::Permanent,
            None,
            format!("{what}: cannot talk to Nomad at {address} over TLS: {detail}"),
        )
    } else if e.is_timeout() {
        ApiError::new(
            ErrorClass::Transient,
            None,
            format!("{what}: Nomad at {address} did not answer in time: {detail}"),
        )
    } else {
        ApiError::new(
            ErrorClass::Transient,
            None,
            format!("{what}: cannot reach Nomad at {address}: {detail}"),
        )
    }
}

/// `host:4646` → `http://host:4646`; trailing slashes dropped. Only http and https.
pub fn normalize_address(address: &str) -> Result<String, ApiError> {
    let a = address.trim().trim_end_matches('/');
    let a = if a.contains("://") {
        a.to_owned()
    } else {
        format!("http://{a}")
    };
    let bad = |why: &str| {
        ApiError::new(
            ErrorClass::Permanent,
            None,
            format!("the nomad credential's address {address:?} {why}"),
        )
    };
    let url = reqwest::Url::parse(&a).map_err(|e| bad(&format!("is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must start with http:// or https://"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(a)
}

fn seg(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// `/v1/var/<path>` with each segment of the variable path encoded.
fn var_path(path: &str) -> String {
    let encoded: Vec<String> = path
        .trim_matches(|c: char| c == '/' || c.is_whitespace())
        .split('/')
        .map(seg)
        .collect();
    format!("/v1/var/{}", encoded.join("/"))
}

fn job_id(job: &serde_json::Value) -> &str {
    job.get("ID")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classed_as_the_reference_says() {
        let c = |s, body: &str| classify("register job \"web\"", s, body).class;
        assert_eq!(c(403, "Permission denied"), ErrorClass::Permanent);
        assert_eq!(c(400, "Job ID does not match name"), ErrorClass::Permanent);
        assert_eq!(
            c(
                500,
                "Enforcing job modify index 17: job exists with conflicting job modify index: 18"
            ),
            ErrorClass::Conflict
        );
        assert_eq!(
            c(
                500,
                "1 error occurred:\n\t* Task group web validation failed: 1 error occurred:\n\t* Missing task driver\n\n\n"
            ),
            ErrorClass::Permanent
        );
        assert_eq!(
            c(
                500,
                "2 errors occurred:\n\t* Missing job ID\n\t* Missing job name\n\n"
            ),
            ErrorClass::Permanent
        );
        assert_eq!(
            c(500, "cannot update job from type \"service\" to \"batch\""),
            ErrorClass::Permanent
        );
        assert_eq!(c(500, "No cluster leader"), ErrorClass::Transient);
        assert_eq!(
            c(500, "rpc error: leadership lost while committing log"),
            ErrorClass::Transient
        );
        assert_eq!(
            c(500, "rpc error: Not ready to serve consistent reads"),
            ErrorClass::Transient
        );
        // Uncoded refusals are not retried forever (issue 12 item 4).
        assert_eq!(
            c(500, "error in job mutator connect: invalid service name"),
            ErrorClass::Permanent
        );
        assert_eq!(c(500, "No path to region"), ErrorClass::Permanent);
        assert_eq!(
            c(500, "job validation hook rejected the job: quota exceeded"),
            ErrorClass::Permanent
        );
        // The index conflict wherever the phrase is (issue 12 item 5).
        assert_eq!(
            c(
                500,
                "rpc error: Enforcing job modify index 3: job exists with conflicting job modify index: 4"
            ),
            ErrorClass::Conflict
        );
        assert_eq!(c(503, "unavailable"), ErrorClass::Transient);
        assert_eq!(c(502, ""), ErrorClass::Transient);
        assert_eq!(c(409, "{}"), ErrorClass::Conflict);
        assert_eq!(c(429, "slow down"), ErrorClass::Transient);
        assert_eq!(c(405, "Invalid method"), ErrorClass::Permanent);
    }

    #[test]
    fn messages_keep_nomads_words_and_explain_a_403() {
        let e = classify(
            "register job \"web\"",
            500,
            "1 error occurred:\n\t* Missing task driver\n\n",
        );
        assert_eq!(
            e.message,
            "register job \"web\": 1 error occurred:\n\t* Missing task driver"
        );
        let e = classify("read job \"web\"", 403, "Permission denied");
        assert!(e.message.contains("check the nomad credential's token"));
        assert!(e.message.contains("Permission denied"));
    }

    #[test]
    fn addresses_get_a_scheme_and_lose_trailing_slashes() {
        assert_eq!(
            normalize_address("127.0.0.1:4646").ok().as_deref(),
            Some("http://127.0.0.1:4646")
        );
        assert_eq!(
            normalize_address("https://nomad.internal:4646/")
                .ok()
                .as_deref(),
            Some("https://nomad.internal:4646")
        );
        assert!(normalize_address("unix:///var/run/nomad.sock").is_err());
        assert!(normalize_address("https://:4646").is_err());
    }

    #[test]
    fn variable_paths_and_ids_are_encoded_per_segment() {
        assert_eq!(var_path("nomad/jobs/web"), "/v1/var/nomad/jobs/web");
        assert_eq!(var_path("/nomad/jobs/a b/"), "/v1/var/nomad/jobs/a%20b");
        assert_eq!(seg("web/1"), "web%2F1");
    }

    #[test]
    fn redact_hides_every_secret() {
        let s = Sensitive::new("hunter2");
        assert_eq!(
            redact("bad value hunter2 and hunter2", &[&s]),
            "bad value (sensitive) and (sensitive)"
        );
    }

    #[test]
    fn nulls_and_missing_fields_decode_as_empty() {
        let j: JobInfo = serde_json::from_str(
            r#"{"ID":"web","Version":3,"JobModifyIndex":17,"Stop":false,"Status":"running","TaskGroups":null}"#,
        )
        .expect("decodes");
        assert_eq!(j.id, "web");
        assert_eq!(j.version, 3);
        assert!(j.task_groups.is_empty());
        let p: PlanResponse = serde_json::from_str(
            r#"{"Diff":{"Type":"None","ID":"web","Fields":null,"Objects":null,"TaskGroups":[{"Type":"None","Name":"web","Fields":null,"Objects":null,"Tasks":null,"Updates":{"ignore":1}}]},"FailedTGAllocs":null,"JobModifyIndex":17,"Warnings":""}"#,
        )
        .expect("decodes");
        assert_eq!(p.diff.map(|d| d.r#type), Some("None".to_owned()));
        let v: Variable = serde_json::from_str(
            r#"{"Namespace":"default","Path":"nomad/jobs/web","ModifyIndex":52,"Items":{"DB_PASSWORD":"s3cr3t"}}"#,
        )
        .expect("decodes");
        assert_eq!(v.modify_index, 52);
        assert!(!format!("{v:?}").contains("s3cr3t"));
    }
}
