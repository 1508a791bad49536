//! HTTP plumbing (§1): turns an axum request into an [`Incoming`] (decoded path, query, token),
//! applies a pending [`fail_next`](crate::NomadDouble::fail_next), holds blocking queries
//! (`?index=&wait=`) until the index moves, logs the exchange and renders the [`Reply`] with
//! Nomad's headers and `?pretty`.
//! Must not answer an endpoint itself: routes, status codes and bodies are the cluster state's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use crate::decode::get;
use crate::go::parse_go_duration;
use crate::{Request, Shared};

/// A request as the handlers see it.
pub(crate) struct Incoming {
    pub(crate) method: String,
    pub(crate) path: String,
    raw_query: String,
    query: Vec<(String, String)>,
    pub(crate) token: Option<String>,
    pub(crate) body: Bytes,
}

impl Incoming {
    /// Go's `Query().Get`: the first value, "" when absent.
    pub(crate) fn q(&self, k: &str) -> &str {
        self.query
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
    pub(crate) fn has(&self, k: &str) -> bool {
        self.query.iter().any(|(n, _)| n == k)
    }
    pub(crate) fn namespace(&self) -> String {
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

pub(crate) struct Reply {
    status: u16,
    body: Body,
    /// `X-Nomad-Index`, exactly as written.
    pub(crate) index: Option<u64>,
    /// Reads also carry `X-Nomad-KnownLeader` / `X-Nomad-LastContact`.
    query_meta: bool,
    /// A JSON body that Go would send as `text/plain` (409 variable conflicts).
    pub(crate) sniffed: bool,
}

impl Reply {
    pub(crate) fn json(v: Value) -> Reply {
        Reply {
            status: 200,
            body: Body::Json(v),
            index: None,
            query_meta: false,
            sniffed: false,
        }
    }
    pub(crate) fn err(status: u16, msg: impl Into<String>) -> Reply {
        Reply {
            status,
            body: Body::Text(msg.into()),
            index: None,
            query_meta: false,
            sniffed: false,
        }
    }
    pub(crate) fn empty(status: u16) -> Reply {
        Reply {
            status,
            body: Body::Empty,
            index: None,
            query_meta: false,
            sniffed: false,
        }
    }
    /// Nomad's `setIndex`: never 0, so blocking queries cannot spin.
    pub(crate) fn index(mut self, i: u64) -> Reply {
        self.index = Some(i.max(1));
        self
    }
    /// Nomad's `setMeta`.
    pub(crate) fn meta(mut self, i: u64) -> Reply {
        self.query_meta = true;
        self.index(i)
    }
    pub(crate) fn status(mut self, s: u16) -> Reply {
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

pub(crate) async fn handle(
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

pub(crate) async fn answer(shared: &Shared, req: &Incoming) -> Reply {
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
