//! Prometheus metrics and a health check on `--metrics-addr` (TCP): `/metrics` in the text
//! exposition format and `/healthz` (200 while the daemon converges, 503 when it is frozen on
//! bad manifests or degraded by failures). Counters are bumped by the event loop; resource
//! gauges are read from state at scrape time. Holds no secrets.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::control::{DaemonStatus, FailedResource};
use crate::engine::blocking;
use crate::provider::ErrorClass;
use crate::state::{Run, StateStore, Status};

type Labels = Vec<(String, String)>;

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    resources: Family<Labels, Gauge>,
    runs: Family<Labels, Counter>,
    apply_seconds: Histogram,
    drift: Counter,
    last_reload: Gauge<f64, AtomicU64>,
    reload_failures: Counter,
    results: Family<Labels, Counter>,
    failed: Family<Labels, Gauge>,
    next_retry: Gauge<f64, AtomicU64>,
    leader: Gauge,
    failovers: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tend");
        let resources = Family::<Labels, Gauge>::default();
        let runs = Family::<Labels, Counter>::default();
        let apply_seconds = Histogram::new(exponential_buckets(0.05, 2.0, 14));
        let drift = Counter::default();
        let last_reload = Gauge::<f64, AtomicU64>::default();
        let reload_failures = Counter::default();
        let results = Family::<Labels, Counter>::default();
        let failed = Family::<Labels, Gauge>::default();
        let next_retry = Gauge::<f64, AtomicU64>::default();
        let leader = Gauge::default();
        let failovers = Counter::default();
        registry.register(
            "leader",
            "1 while this daemon leads (the only daemon of a sled state always does), 0 on standby",
            leader.clone(),
        );
        registry.register(
            "failovers",
            "Times this daemon took the lead of a shared state that another had led",
            failovers.clone(),
        );
        registry.register(
            "resources",
            "Resources in state by status",
            resources.clone(),
        );
        registry.register("runs", "Applies by result", runs.clone());
        registry.register(
            "apply_duration_seconds",
            "Wall time of an apply",
            apply_seconds.clone(),
        );
        registry.register(
            "drift_detections",
            "Resources found drifted by a refresh",
            drift.clone(),
        );
        registry.register(
            "last_successful_reload_timestamp_seconds",
            "When the manifests last loaded cleanly (Unix time)",
            last_reload.clone(),
        );
        registry.register(
            "reload_failures",
            "Reloads whose manifests failed to load",
            reload_failures.clone(),
        );
        registry.register(
            "resource_results",
            "Resources handled by applies, by action and outcome",
            results.clone(),
        );
        registry.register(
            "failed_resources",
            "Resources whose last action failed, by error class",
            failed.clone(),
        );
        registry.register(
            "next_retry_timestamp_seconds",
            "When failed resources are retried next (Unix time; 0: no retry scheduled)",
            next_retry.clone(),
        );
        Metrics {
            registry,
            resources,
            runs,
            apply_seconds,
            drift,
            last_reload,
            reload_failures,
            results,
            failed,
            next_retry,
            leader,
            failovers,
        }
    }
}

impl Metrics {
    pub fn run_finished(&self, run: &Run, seconds: f64) {
        let result = if run.exit_code == 0 { "ok" } else { "failed" };
        self.runs
            .get_or_create(&vec![("result".into(), result.into())])
            .inc();
        for r in &run.results {
            self.results
                .get_or_create(&vec![
                    ("action".into(), r.action.verb().into()),
                    ("outcome".into(), r.outcome.as_str().into()),
                ])
                .inc();
        }
        self.apply_seconds.observe(seconds);
    }

    /// The failed resources by class (a failure recorded before classes were counts as
    /// transient: it is retried like one), and the next retry.
    pub fn failed(&self, failed: &[FailedResource], next_retry_at: Option<u64>) {
        for class in ErrorClass::ALL {
            let n = failed
                .iter()
                .filter(|f| f.error_class.unwrap_or(ErrorClass::Transient) == class)
                .count();
            self.failed
                .get_or_create(&vec![("class".into(), class.as_str().into())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.next_retry
            .set(next_retry_at.map_or(0.0, |ms| ms as f64 / 1000.0));
    }

    pub fn drift_found(&self, n: usize) {
        self.drift.inc_by(n as u64);
    }

    pub fn reloaded(&self, unix_ms: u64) {
        self.last_reload.set(unix_ms as f64 / 1000.0);
    }

    pub fn reload_failed(&self) {
        self.reload_failures.inc();
    }

    pub fn leading(&self, yes: bool) {
        self.leader.set(i64::from(yes));
    }

    pub fn failover(&self) {
        self.failovers.inc();
    }
}

#[derive(Clone)]
struct Ctx {
    metrics: Arc<Metrics>,
    status: Arc<Mutex<DaemonStatus>>,
    store: Arc<dyn StateStore>,
}

/// Serve `/metrics` and `/healthz` on `addr`.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<DaemonStatus>>,
    store: Arc<dyn StateStore>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let app = Router::new()
        .route("/metrics", get(scrape))
        .route("/healthz", get(health))
        .with_state(Ctx {
            metrics,
            status,
            store,
        });
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    }))
}

async fn scrape(State(ctx): State<Ctx>) -> impl IntoResponse {
    // Sealed: a scrape reads every record's status, not every decoded spec.
    match blocking(&ctx.store, |s| s.list_sealed()).await {
        Ok(records) => {
            ctx.metrics.resources.clear();
            for status in Status::ALL {
                ctx.metrics
                    .resources
                    .get_or_create(&vec![("status".into(), status.as_str().into())])
                    .set(0);
            }
            for r in records {
                ctx.metrics
                    .resources
                    .get_or_create(&vec![("status".into(), r.status.as_str().into())])
                    .inc();
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: cannot read state"),
    }
    let mut body = String::new();
    match encode(&mut body, &ctx.metrics.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            e.to_string(),
        ),
    }
}

async fn health(State(ctx): State<Ctx>) -> impl IntoResponse {
    let (phase, summary) = ctx
        .status
        .lock()
        .map(|s| (s.phase.clone(), s.summary.clone()))
        .unwrap_or_else(|_| ("unknown".into(), String::new()));
    let healthy = !matches!(phase.as_str(), "frozen" | "degraded" | "stalled");
    let code = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{phase}: {summary}\n"))
}
