//! The status page on `--ui-addr` (TCP, off by default): `/` is a read-only HTML page rendered
//! on the server (askama, `templates/status.html`, HTML-escaped) and `/graph.svg` the dependency
//! graph. It shows resources grouped by tenant and kind and coloured by status, the graph in the
//! same colours, the last runs, load errors, the leader and revision, and refreshes itself (a
//! `<meta http-equiv="refresh">`, no script). It has no peer credentials like the Unix socket:
//! it binds a loopback address, or another only with a token (`--ui-token-file`), which every
//! request must then carry. Reads `DaemonStatus`, sealed record heads and runs: never a spec,
//! an output or a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use askama::Template;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use super::control::DaemonStatus;
use crate::address::Address;
use crate::engine::blocking;
use crate::state::{Run, StateStore, Status};

/// How many runs the page lists, and how many output lines of each it shows.
const RUNS: usize = 10;
const TAIL: usize = 20;

/// Every status the page colours, in the order its legend lists them.
pub const STATUSES: [&str; 8] = [
    "ready", "applying", "failed", "drifted", "orphaned", "held", "pending", "config",
];

/// The colour (stroke, fill) of a status, shared by the page's CSS and the SVG.
pub fn colour(status: &str) -> (&'static str, &'static str) {
    match status {
        "ready" => ("#2e7d32", "#e8f5e9"),
        "applying" => ("#1565c0", "#e3f2fd"),
        "failed" => ("#c62828", "#ffebee"),
        "drifted" => ("#ff8f00", "#fff8e1"),
        "orphaned" => ("#616161", "#eeeeee"),
        "held" => ("#6a1b9a", "#f3e5f5"),
        "config" => ("#b0bec5", "#fafafa"),
        _ => ("#9e9e9e", "#ffffff"),
    }
}

/// Refuse a non-loopback address without a token.
pub fn check_bind(addr: SocketAddr, token: Option<&str>) -> anyhow::Result<()> {
    if !addr.ip().is_loopback() && token.is_none() {
        anyhow::bail!(
            "--ui-addr {addr} is not a loopback address: the status page has no peer credentials, so it binds another address only with --ui-token-file"
        );
    }
    Ok(())
}

/// The token in `path` (surrounding whitespace trimmed); empty is an error.
pub fn read_token(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("--ui-token-file {}: {e}", path.display()))?;
    let token = text.trim().to_owned();
    if token.is_empty() {
        anyhow::bail!("--ui-token-file {}: the file is empty", path.display());
    }
    Ok(token)
}

/// One resource on the page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub address: String,
    pub status: &'static str,
    /// For a failed resource: `class: error`.
    pub detail: String,
}

/// Resources of one kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KindGroup {
    pub kind: String,
    pub rows: Vec<Row>,
}

/// Resources of one tenant (`TenantInstance.x` and what it expands to), or of none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantGroup {
    pub tenant: String,
    pub kinds: Vec<KindGroup>,
}

/// The tenant an address belongs to: `x` for `TenantInstance.x` and its children.
pub fn tenant_of(a: &Address) -> Option<String> {
    let tenant = |k: crate::address::Kind| k.as_str() == "TenantInstance";
    match a.parent {
        Some(p) if tenant(p) => Some(a.name.to_string()),
        None if tenant(a.kind) => Some(a.name.to_string()),
        _ => None,
    }
}

/// The page's status of one address: held, orphaned, failed, applying, drifted, ready,
/// pending (declared, not applied yet), or config (a kind nothing converges, such as a
/// credential or a server: it has no record), from its record's status and the daemon's.
pub fn classify(address: &str, record: Option<Status>, daemon: &DaemonStatus) -> Row {
    let has = |v: &[String]| v.iter().any(|x| x == address);
    let failed = daemon.failed.iter().find(|f| f.address == address);
    let (status, detail) = if has(&daemon.held) {
        ("held", String::new())
    } else if has(&daemon.orphans) {
        ("orphaned", String::new())
    } else if let Some(f) = failed {
        let class = f.error_class.map_or("unclassified", |c| c.as_str());
        ("failed", format!("{class}: {}", f.error))
    } else if record == Some(Status::Failed) {
        ("failed", String::new())
    } else if record == Some(Status::Applying) {
        ("applying", String::new())
    } else if has(&daemon.drifted) {
        ("drifted", String::new())
    } else if record == Some(Status::Ready) {
        ("ready", String::new())
    } else if address
        .parse::<Address>()
        .is_ok_and(|a| !a.kind.is_managed())
    {
        ("config", String::new())
    } else {
        ("pending", String::new())
    };
    Row {
        address: address.to_owned(),
        status,
        detail,
    }
}

/// Every address the page knows (the last load's graph, state, orphans), classified and
/// grouped by tenant (resources of no tenant first) then kind (in the registry's order).
pub fn group(records: &BTreeMap<String, Status>, daemon: &DaemonStatus) -> Vec<TenantGroup> {
    let mut all: BTreeSet<Address> = BTreeSet::new();
    let names = daemon
        .graph
        .iter()
        .map(|(a, _)| a)
        .chain(records.keys())
        .chain(&daemon.orphans)
        .chain(&daemon.held);
    for a in names {
        if let Ok(a) = a.parse::<Address>() {
            all.insert(a);
        }
    }
    let mut tenants: BTreeMap<Option<String>, BTreeMap<crate::address::Kind, Vec<Row>>> =
        BTreeMap::new();
    for a in &all {
        let text = a.to_string();
        let row = classify(&text, records.get(&text).copied(), daemon);
        tenants
            .entry(tenant_of(a))
            .or_default()
            .entry(a.kind)
            .or_default()
            .push(row);
    }
    tenants
        .into_iter()
        .map(|(tenant, kinds)| TenantGroup {
            tenant: tenant.map_or_else(|| "(no tenant)".to_owned(), |t| format!("tenant {t}")),
            kinds: kinds
                .into_iter()
                .map(|(kind, rows)| KindGroup {
                    kind: kind.as_str().to_owned(),
                    rows,
                })
                .collect(),
        })
        .collect()
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The dependency graph as SVG: a column per dependency depth (a resource sits one column right
/// of its deepest dependency), a box per resource coloured by its status, a line from each
/// dependency to its dependent. `nodes` are addresses with their dependencies, dependencies
/// first; every text is escaped.
pub fn svg(nodes: &[(String, Vec<String>)], status: &BTreeMap<String, &'static str>) -> String {
    const H: usize = 26;
    const GAP_X: usize = 50;
    const GAP_Y: usize = 12;
    const PAD: usize = 10;
    let mut depth: BTreeMap<&str, usize> = BTreeMap::new();
    for (a, deps) in nodes {
        let d = deps
            .iter()
            .filter_map(|x| depth.get(x.as_str()))
            .map(|d| d + 1)
            .max()
            .unwrap_or(0);
        depth.insert(a, d);
    }
    let longest = nodes.iter().map(|(a, _)| a.chars().count()).max();
    let w = longest.map_or(120, |n| (n * 7 + 20).max(120));
    let mut rows: BTreeMap<usize, usize> = BTreeMap::new();
    let mut place: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for (a, _) in nodes {
        let d = depth[a.as_str()];
        let row = rows.entry(d).or_insert(0);
        place.insert(a, (PAD + d * (w + GAP_X), PAD + *row * (H + GAP_Y)));
        *row += 1;
    }
    let columns = rows.len().max(1);
    let height = rows.values().max().copied().unwrap_or(0);
    let width = PAD * 2 + columns * w + (columns - 1) * GAP_X;
    let height = PAD * 2 + height * (H + GAP_Y);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="graph" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="monospace" font-size="12">"#
    );
    for (a, deps) in nodes {
        let (x2, y2) = place[a.as_str()];
        for d in deps {
            if let Some(&(x1, y1)) = place.get(d.as_str()) {
                let _ = write!(
                    s,
                    r##"<line class="edge" x1="{}" y1="{}" x2="{x2}" y2="{}" stroke="#90a4ae" stroke-width="1.5"/>"##,
                    x1 + w,
                    y1 + H / 2,
                    y2 + H / 2
                );
            }
        }
    }
    for (a, _) in nodes {
        let (x, y) = place[a.as_str()];
        let st = status.get(a).copied().unwrap_or("pending");
        let (stroke, fill) = colour(st);
        let a = escape(a);
        let _ = write!(
            s,
            r##"<g class="node status-{st}" data-address="{a}"><title>{a}: {st}</title><rect x="{x}" y="{y}" width="{w}" height="{H}" rx="4" fill="{fill}" stroke="{stroke}" stroke-width="2"/><text x="{}" y="{}" fill="#212121">{a}</text></g>"##,
            x + 8,
            y + H / 2 + 4
        );
    }
    s.push_str("</svg>");
    s
}

/// One resource's result in a run, as the page shows it.
pub struct ResultRow {
    pub address: String,
    pub action: &'static str,
    pub outcome: &'static str,
    pub status: &'static str,
    pub detail: String,
    pub elapsed: String,
}

/// One run, as the page shows it.
pub struct RunRow {
    pub id: String,
    pub trigger: &'static str,
    pub summary: String,
    pub ok: bool,
    pub started: String,
    pub elapsed: String,
    pub revision: String,
    pub results: Vec<ResultRow>,
    pub tail: String,
}

fn millis(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

fn unix_ms(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_seconds(t).to_string()
}

/// A run for the page: its results, elapsed times and the last lines of its output.
pub fn run_row(r: &Run) -> RunRow {
    let results = r
        .results
        .iter()
        .map(|x| ResultRow {
            address: x.address.clone(),
            action: x.action.verb(),
            outcome: x.outcome.as_str(),
            status: if x.outcome.ok() { "ready" } else { "failed" },
            detail: x.detail.clone().unwrap_or_default(),
            elapsed: millis(x.elapsed_ms),
        })
        .collect();
    let skip = r.output_tail.len().saturating_sub(TAIL);
    RunRow {
        id: r.id.clone(),
        trigger: match r.trigger {
            crate::state::Trigger::Cli => "cli",
            crate::state::Trigger::Daemon => "daemon",
        },
        summary: r.summary.clone(),
        ok: r.exit_code == 0,
        started: unix_ms(r.started_at),
        elapsed: millis(r.ended_at.saturating_sub(r.started_at)),
        revision: r.revision.clone().unwrap_or_default(),
        results,
        tail: r.output_tail[skip..].join("\n"),
    }
}

/// The page.
#[derive(Template)]
#[template(path = "status.html")]
pub struct Page {
    pub phase: String,
    pub summary: String,
    pub leader: String,
    pub revision: String,
    pub manifests: String,
    pub legend: Vec<(&'static str, usize)>,
    pub tenants: Vec<TenantGroup>,
    pub graph: String,
    pub load_errors: Vec<String>,
    pub runs: Vec<RunRow>,
}

/// The page for a daemon status, its records' statuses and its last runs (pure).
pub fn page(daemon: &DaemonStatus, records: &BTreeMap<String, Status>, runs: &[Run]) -> Page {
    let tenants = group(records, daemon);
    let status: BTreeMap<String, &'static str> = tenants
        .iter()
        .flat_map(|t| &t.kinds)
        .flat_map(|k| &k.rows)
        .map(|r| (r.address.clone(), r.status))
        .collect();
    let legend = STATUSES
        .iter()
        .map(|s| (*s, status.values().filter(|v| *v == s).count()))
        .collect();
    let leader = match (daemon.role.as_str(), &daemon.leader) {
        (_, Some(l)) => l.clone(),
        ("", None) => "this daemon (the only one)".to_owned(),
        (role, None) => format!("{role}, leader unknown"),
    };
    Page {
        phase: daemon.phase.clone(),
        summary: daemon.summary.clone(),
        leader,
        revision: match (&daemon.revision, &daemon.manifests_digest) {
            (Some(r), _) => r.clone(),
            (None, Some(d)) => format!("files, digest {}", &d[..d.len().min(12)]),
            (None, None) => "(none loaded)".to_owned(),
        },
        manifests: daemon.manifests.clone(),
        legend,
        tenants,
        graph: svg(&daemon.graph, &status),
        load_errors: daemon.load_errors.clone(),
        runs: runs.iter().take(RUNS).map(run_row).collect(),
    }
}

#[derive(Clone)]
struct Ctx {
    status: Arc<Mutex<DaemonStatus>>,
    store: Arc<dyn StateStore>,
    token: Option<Arc<str>>,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Serve `/` and `/graph.svg` on `addr` (checked by [`check_bind`] first).
pub async fn serve(
    addr: SocketAddr,
    token: Option<String>,
    status: Arc<Mutex<DaemonStatus>>,
    store: Arc<dyn StateStore>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    check_bind(addr, token.as_deref())?;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/", get(index))
        .route("/graph.svg", get(graph))
        .with_state(Ctx {
            status,
            store,
            token: token.map(Arc::from),
        });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "status page stopped");
        }
    }))
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether a request carries the token (`Authorization: Bearer` or `?token=`), when one is set.
pub fn authorized(token: Option<&str>, headers: &HeaderMap, query: Option<&str>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    [bearer, query]
        .into_iter()
        .flatten()
        .any(|t| same(t.as_bytes(), token.as_bytes()))
}

fn refused() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a token is required (Authorization: Bearer, or ?token=)\n",
    )
        .into_response()
}

async fn gather(ctx: &Ctx) -> Result<(DaemonStatus, BTreeMap<String, Status>, Vec<Run>), Response> {
    let internal = |e: String| (StatusCode::INTERNAL_SERVER_ERROR, e).into_response();
    let daemon = ctx
        .status
        .lock()
        .map_err(|e| internal(e.to_string()))?
        .clone();
    // Sealed heads: the page needs statuses, never decoded specs or secrets.
    let records = blocking(&ctx.store, |s| s.list_sealed())
        .await
        .map_err(|e| internal(e.to_string()))?
        .into_iter()
        .map(|r| (r.address.to_string(), r.status))
        .collect();
    let runs = blocking(&ctx.store, |s| s.runs(RUNS))
        .await
        .map_err(|e| internal(e.to_string()))?;
    Ok((daemon, records, runs))
}

async fn index(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if !authorized(ctx.token.as_deref(), &headers, q.token.as_deref()) {
        return refused();
    }
    let (daemon, records, runs) = match gather(&ctx).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match page(&daemon, &records, &runs).render() {
        Ok(html) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            html,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn graph(
    State(ctx): State<Ctx>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
) -> Response {
    if !authorized(ctx.token.as_deref(), &headers, q.token.as_deref()) {
        return refused();
    }
    let (daemon, records, runs) = match gather(&ctx).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let p = page(&daemon, &records, &runs);
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        p.graph,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ErrorClass;

    fn daemon() -> DaemonStatus {
        DaemonStatus {
            phase: "degraded".into(),
            graph: vec![
                ("PostgresServer.main".into(), vec![]),
                (
                    "PostgresDatabase.a".into(),
                    vec!["PostgresServer.main".into()],
                ),
                (
                    "PostgresDatabase.b".into(),
                    vec!["PostgresServer.main".into()],
                ),
                ("TenantInstance.acme".into(), vec![]),
                (
                    "TenantInstance.acme/PostgresDatabase".into(),
                    vec!["TenantInstance.acme".into()],
                ),
            ],
            failed: vec![super::super::control::FailedResource {
                address: "PostgresDatabase.a".into(),
                error: "password authentication failed <x>".into(),
                error_class: Some(ErrorClass::Permanent),
                next_retry_at: None,
            }],
            drifted: vec!["PostgresDatabase.b".into()],
            orphans: vec!["PostgresDatabase.old".into()],
            ..DaemonStatus::default()
        }
    }

    fn records() -> BTreeMap<String, Status> {
        [
            ("PostgresDatabase.a", Status::Failed),
            ("PostgresDatabase.b", Status::Ready),
            ("PostgresDatabase.old", Status::Ready),
            ("TenantInstance.acme/PostgresDatabase", Status::Applying),
        ]
        .into_iter()
        .map(|(a, s)| (a.to_owned(), s))
        .collect()
    }

    #[test]
    fn resources_are_grouped_by_tenant_then_kind_and_classified() {
        let groups = group(&records(), &daemon());
        let names: Vec<&str> = groups.iter().map(|g| g.tenant.as_str()).collect();
        assert_eq!(names, ["(no tenant)", "tenant acme"]);
        let kinds: Vec<&str> = groups[0].kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(kinds, ["PostgresServer", "PostgresDatabase"]);
        let rows: Vec<(&str, &str)> = groups[0].kinds[1]
            .rows
            .iter()
            .map(|r| (r.address.as_str(), r.status))
            .collect();
        assert_eq!(
            rows,
            [
                ("PostgresDatabase.a", "failed"),
                ("PostgresDatabase.b", "drifted"),
                ("PostgresDatabase.old", "orphaned"),
            ]
        );
        assert_eq!(
            groups[0].kinds[1].rows[0].detail,
            "permanent: password authentication failed <x>"
        );
        assert_eq!(groups[0].kinds[0].rows[0].status, "config");
        assert_eq!(
            classify("PostgresDatabase.new", None, &daemon()).status,
            "pending"
        );
        let acme: Vec<(&str, &str)> = groups[1]
            .kinds
            .iter()
            .flat_map(|k| &k.rows)
            .map(|r| (r.address.as_str(), r.status))
            .collect();
        assert!(acme.contains(&("TenantInstance.acme/PostgresDatabase", "applying")));
        let mut held = daemon();
        held.held = vec!["PostgresDatabase.b".into()];
        assert_eq!(classify("PostgresDatabase.b", None, &held).status, "held");
    }

    #[test]
    fn the_svg_puts_dependents_right_of_their_dependencies_in_status_colours() {
        let d = daemon();
        let status: BTreeMap<String, &'static str> = [
            ("PostgresServer.main".to_owned(), "ready"),
            ("PostgresDatabase.a".to_owned(), "failed"),
        ]
        .into_iter()
        .collect();
        let s = svg(&d.graph, &status);
        assert!(s.starts_with("<svg ") && s.ends_with("</svg>"), "{s}");
        assert_eq!(s.matches("<g class=\"node").count(), 5, "{s}");
        assert_eq!(s.matches("<line ").count(), 3, "{s}");
        assert!(s.contains(r#"class="node status-failed" data-address="PostgresDatabase.a""#));
        assert!(s.contains(r##"fill="#ffebee" stroke="#c62828""##), "{s}");
        assert!(s.contains("status-pending"), "unknown statuses are pending");
        let x = |a: &str| {
            let at = s.find(&format!("data-address=\"{a}\"")).expect(a);
            let rest = &s[at..];
            let x = &rest[rest.find("x=\"").expect("x") + 3..];
            x[..x.find('"').expect("end")]
                .parse::<usize>()
                .expect("number")
        };
        assert!(x("PostgresDatabase.a") > x("PostgresServer.main"));
        assert_eq!(x("PostgresDatabase.a"), x("PostgresDatabase.b"));
        let nasty = svg(&[("<script>&\"".into(), vec![])], &BTreeMap::new());
        assert!(!nasty.contains("<script>"), "{nasty}");
        assert!(nasty.contains("&lt;script&gt;&amp;&quot;"), "{nasty}");
        assert!(svg(&[], &BTreeMap::new()).starts_with("<svg "));
    }

    #[test]
    fn the_page_escapes_and_lists_runs_and_load_errors() {
        let mut d = daemon();
        d.load_errors = vec!["db.yaml:3:7: error: <bad>".into()];
        d.leader = Some("this daemon".into());
        let run = Run {
            id: "0001".into(),
            trigger: crate::state::Trigger::Daemon,
            summary: "Plan: 1 to add, 0 to change, 0 to destroy.".into(),
            results: vec![crate::state::ResourceResult {
                address: "PostgresDatabase.a".into(),
                action: crate::plan::Action::Create,
                outcome: crate::state::RunOutcome::Failed,
                detail: Some("password authentication failed".into()),
                error_class: Some(ErrorClass::Permanent),
                elapsed_ms: 1500,
            }],
            output_tail: (0..30).map(|i| format!("line {i}")).collect(),
            exit_code: 1,
            started_at: 0,
            ended_at: 1500,
            revision: None,
        };
        let html = page(&d, &records(), &[run]).render().expect("render");
        assert!(html.contains("http-equiv=\"refresh\""), "{html}");
        assert!(
            html.contains("db.yaml:3:7: error: &#60;bad&#62;")
                || html.contains("db.yaml:3:7: error: &lt;bad&gt;"),
            "{html}"
        );
        assert!(!html.contains("<bad>"), "{html}");
        assert!(html.contains("1.5 s"), "{html}");
        assert!(
            html.contains("line 29") && !html.contains("line 9\n"),
            "{html}"
        );
        assert!(html.contains("class=\"res status-failed\""), "{html}");
        assert!(html.contains("class=\"res status-drifted\""), "{html}");
        assert!(html.contains("<svg "), "the graph is inlined: {html}");
        assert!(html.contains("this daemon"), "{html}");
    }

    #[test]
    fn a_non_loopback_address_needs_a_token_and_requests_then_carry_it() {
        let lo: SocketAddr = "127.0.0.1:9465".parse().expect("addr");
        let any: SocketAddr = "0.0.0.0:9465".parse().expect("addr");
        let v6: SocketAddr = "[::1]:9465".parse().expect("addr");
        assert!(check_bind(lo, None).is_ok());
        assert!(check_bind(v6, None).is_ok());
        assert!(check_bind(any, None).is_err());
        assert!(check_bind(any, Some("t")).is_ok());
        let none = HeaderMap::new();
        assert!(authorized(None, &none, None));
        assert!(!authorized(Some("s3cret"), &none, None));
        assert!(!authorized(Some("s3cret"), &none, Some("s3cre")));
        assert!(authorized(Some("s3cret"), &none, Some("s3cret")));
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            "Bearer s3cret".parse().expect("value"),
        );
        assert!(authorized(Some("s3cret"), &h, None));
        h.insert(
            header::AUTHORIZATION,
            "Basic s3cret".parse().expect("value"),
        );
        assert!(!authorized(Some("s3cret"), &h, None));
    }
}
