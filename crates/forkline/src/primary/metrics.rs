//! The primary's HTTP endpoint for monitoring (`ClusterBuilder::metrics`): Prometheus text at
//! `/metrics` (the prometheus-client crate, every series named `forkline_…`), `/healthz` (the
//! primary is alive) and `/readyz` (200 while at least one worker is ready), for Kubernetes
//! probes. Served by axum on the primary's runtime; each scrape reads `Cluster::stats()`, so
//! the connection path pays nothing.

use std::sync::atomic::AtomicU64;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::cluster::Cluster;
use super::handle::WorkerState;
use super::task;

/// Starts serving the endpoint on `listener` until the cluster has stopped.
pub(crate) fn serve(cluster: Cluster, listener: tokio::net::TcpListener) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(cluster.clone());
    task::spawn("metrics", async move {
        let mut finished = cluster.inner.finished.subscribe();
        let stopped = async move {
            let _ = finished.wait_for(|f| f.is_some()).await;
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
}

async fn readyz(axum::extract::State(cluster): axum::extract::State<Cluster>) -> impl IntoResponse {
    let ready = cluster.stats().ready;
    if ready > 0 {
        (StatusCode::OK, format!("{ready} workers ready\n"))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no worker is ready\n".to_string(),
        )
    }
}

async fn metrics(
    axum::extract::State(cluster): axum::extract::State<Cluster>,
) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&cluster),
    )
}

/// The Prometheus text of the cluster as it is now.
pub(crate) fn render(cluster: &Cluster) -> String {
    let stats = cluster.stats();
    let mut registry = Registry::with_prefix("forkline");

    let workers = Family::<Vec<(String, String)>, Gauge>::default();
    for state in [
        WorkerState::Starting,
        WorkerState::Online,
        WorkerState::Ready,
        WorkerState::Draining,
    ] {
        let count = stats
            .workers
            .iter()
            .filter(|w| w.state == Some(state))
            .count();
        let name = serde_json::to_value(state)
            .ok()
            .and_then(|v| v.as_str().map(String::from));
        workers
            .get_or_create(&vec![("state".into(), name.unwrap_or_default())])
            .set(count as i64);
    }
    registry.register("workers", "Workers by state", workers);

    let slots = Gauge::<i64, std::sync::atomic::AtomicI64>::default();
    slots.set(stats.target as i64);
    registry.register("worker_slots", "Worker slots the cluster keeps", slots);

    let restarts = Counter::<u64, AtomicU64>::default();
    restarts.inc_by(stats.workers.iter().map(|w| w.restarts).sum());
    registry.register("restarts", "Worker restarts", restarts);

    let per_worker = |name: &str,
                      help: &str,
                      value: &dyn Fn(&super::stats::WorkerStats) -> Option<u64>,
                      registry: &mut Registry| {
        let family = Family::<Vec<(String, String)>, Gauge>::default();
        for worker in &stats.workers {
            if let Some(v) = value(worker) {
                family
                    .get_or_create(&vec![("slot".into(), worker.slot.to_string())])
                    .set(v as i64);
            }
        }
        registry.register(name, help, family);
    };
    per_worker(
        "worker_connections",
        "Connections handed to the slot's current worker",
        &|w| w.pid.map(|_| w.connections),
        &mut registry,
    );
    per_worker(
        "worker_resident_memory_bytes",
        "Resident memory of the slot's current worker",
        &|w| w.rss_bytes,
        &mut registry,
    );

    let reloads = Family::<Vec<(String, String)>, Counter>::default();
    let (ok, failed) = cluster.reload_counts();
    reloads
        .get_or_create(&vec![("result".into(), "ok".into())])
        .inc_by(ok);
    reloads
        .get_or_create(&vec![("result".into(), "failed".into())])
        .inc_by(failed);
    registry.register("reloads", "Rolling reloads by result", reloads);

    let rejected = Counter::<u64, AtomicU64>::default();
    rejected.inc_by(stats.notify_rejected);
    registry.register(
        "notify_rejected",
        "Notify messages dropped: not from the worker's process group",
        rejected,
    );

    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    text
}
