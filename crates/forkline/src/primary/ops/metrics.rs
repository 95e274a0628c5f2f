//! The primary's HTTP endpoint for monitoring (`ClusterBuilder::metrics`): Prometheus text at
//! `/metrics` (OpenMetrics, written by the prometheus-client crate, every series named
//! `forkline_…`), `/healthz` (the primary is alive) and `/readyz` (200 while at least one
//! worker is ready, or every slot's with `ClusterBuilder::readyz_requires_all`), for Kubernetes
//! probes. Served by axum on the primary's runtime.
//!
//! Each scrape builds the text from one snapshot: `Cluster::stats()` and the connection
//! counters the dispatcher and the proxy keep (see `stats::Traffic`). The connection path only
//! counts, in integers it owns; everything else happens here, at scrape time.

use std::fmt::Debug;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use std::sync::Arc;

use crate::control::{SlotStatus, Status};
use crate::primary::core::Core;
use crate::primary::handle::WorkerState;
use crate::primary::task;
use crate::primary::traffic::counters::{AcceptErrorKind, LatencyHistogram, LATENCY_BOUNDS};

/// Starts serving the endpoint on `listener` until the cluster has stopped.
pub(crate) fn serve(core: Arc<Core>, listener: tokio::net::TcpListener) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(core.arc());
    task::spawn("metrics", async move {
        let mut finished = core.finished().subscribe();
        let mut handover = core.upgrades().handover.subscribe();
        // Until the cluster stops, or a new primary takes the endpoint over (an upgrade).
        let stopped = async move {
            tokio::select! {
                _ = finished.wait_for(|f| f.is_some()) => {}
                _ = handover.wait_for(|h| *h) => {}
            }
        };
        if let Err(e) = axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
        {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
}

/// 200 while at least one worker is ready, or, with `readyz_requires_all`, while every slot's
/// worker is; 503 as soon as a stop was asked for (a lame duck, `shutdown_delay`, included). A replacement on trial is not its slot's worker: during a reload the old workers
/// keep the cluster ready, and a replacement that fails changes nothing.
async fn readyz(axum::extract::State(core): axum::extract::State<Arc<Core>>) -> impl IntoResponse {
    if *core.lame_duck().borrow() || *core.stop_accepting().borrow() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "stopping: not ready for new traffic\n".to_string(),
        );
    }
    let slots = core.slots();
    let ready = slots
        .iter()
        .filter(|s| s.state == Some(WorkerState::Ready))
        .count();
    let wanted = if core.opts().readyz_requires_all {
        slots.len().max(core.target()).max(1)
    } else {
        1
    };
    let code = if ready >= wanted {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, format!("{ready} of {} workers ready\n", slots.len()))
}

async fn metrics(axum::extract::State(core): axum::extract::State<Arc<Core>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        render(&core),
    )
}

/// Series with labels, each a metric of type `M` (prometheus-client's `Family` builds its
/// members itself; these are values already read).
#[derive(Debug)]
struct Labeled<M> {
    series: Vec<(Vec<(&'static str, String)>, M)>,
}

impl<M> Labeled<M> {
    fn new() -> Self {
        Self { series: Vec::new() }
    }

    fn with(mut self, label: &'static str, value: impl ToString, metric: M) -> Self {
        self.series.push((vec![(label, value.to_string())], metric));
        self
    }
}

impl<M: EncodeMetric + TypedMetric> EncodeMetric for Labeled<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, metric) in &self.series {
            metric.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }
}

/// The handoff latency histogram, as the dispatcher kept it.
#[derive(Debug)]
struct Histogram(LatencyHistogram);

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // prometheus-client's own encoding of its histograms: per-bucket counts (it adds them
        // up), the last bound `f64::MAX` for +Inf.
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(self.0.buckets)
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// One series per slot that has a current worker: what `metric` gives for that worker.
fn per_slot<M>(stats: &Status, metric: impl Fn(&SlotStatus) -> Option<M>) -> Labeled<M> {
    stats
        .workers
        .iter()
        .filter(|w| w.pid.is_some())
        .filter_map(|w| Some((w.slot, metric(w)?)))
        .fold(Labeled::new(), |family, (slot, m)| {
            family.with("slot", slot, m)
        })
}

/// The Prometheus text of the cluster as it is now.
pub(crate) fn render(core: &Core) -> String {
    let traffic = core.traffic();
    let stats = crate::primary::ops::stats::snapshot(core, &traffic);
    let mut registry = Registry::with_prefix("forkline");

    // Workers and slots.
    let mut workers = Labeled::new();
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
        workers = workers.with("state", state_name(state), gauge(count as u64));
    }
    registry.register("workers", "Slots' current workers by state", workers);
    registry.register(
        "worker_slots",
        "Worker slots the cluster keeps",
        gauge(stats.target as u64),
    );
    let mut exits = Labeled::new();
    for (reason, n) in core.state().slots.exits_by_reason() {
        exits = exits.with("reason", reason.name(), counter(n));
    }
    registry.register(
        "worker_exits",
        "Worker processes that ended, by reason: what the primary stopped them for (reload, \
         recycle-requests, recycle-memory, scale, stop, watchdog, protocol, ready-timeout) or \
         what they died of (exit, crash, signal, oom)",
        exits,
    );
    let mut restarts = Labeled::new();
    for (reason, n) in core.state().slots.restarts_by_reason() {
        restarts = restarts.with("reason", reason.name(), counter(n));
    }
    registry.register(
        "restarts",
        "Workers started in place of another: after an exit (exit, crash, signal, \
         ready_timeout, killed: by the protocol or the watchdog) or by a replacement that \
         took over (reload, recycle)",
        restarts,
    );
    let (ok, failed) = core.reload_counts();
    registry.register(
        "reloads",
        "Rolling reloads by result",
        Labeled::new()
            .with("result", "ok", counter(ok))
            .with("result", "failed", counter(failed)),
    );
    registry.register(
        "reloading",
        "1 while a rolling reload is in progress",
        gauge(stats.reloading.into()),
    );
    registry.register(
        "notify_rejected",
        "Notify messages dropped: not from the worker's process group",
        counter(stats.notify_rejected),
    );

    // Connections (round-robin and proxy; the workers accept by themselves in the other modes).
    registry.register(
        "connections_accepted",
        "Connections the primary accepted (round-robin, proxy)",
        counter(stats.accepted_total),
    );
    registry.register(
        "connections_handed_off",
        "Connections handed to a worker (round-robin: over its channel; proxy: connected to \
         its port); one taken back and handed again counts again",
        counter(stats.handed_off_total),
    );
    registry.register(
        "connections_redispatched",
        "Connections taken back from a worker (dead, stopped reading, gave them back; proxy: \
         refused) and handed to another",
        counter(stats.redispatched_total),
    );
    let mut errors = Labeled::new();
    for kind in AcceptErrorKind::ALL {
        errors = errors.with(
            "kind",
            kind.name(),
            counter(traffic.accept_errors[kind.index()]),
        );
    }
    registry.register(
        "accept_errors",
        "Failed accepts of the primary by errno: fd_limit (EMFILE, ENFILE), no_memory \
         (ENOBUFS, ENOMEM), other",
        errors,
    );
    registry.register(
        "handoff_latency_seconds",
        "Round-robin: time from accept to the worker's ack, one sample per ack (the \
         connection that completed the worker's ack batch)",
        Histogram(traffic.latency.clone()),
    );
    let addresses = core.listeners().all();
    let mut coalescing = Labeled::new();
    for (listener, on) in &traffic.coalescing {
        let address = addresses
            .iter()
            .find(|l| l.id == *listener)
            .map_or_else(|| listener.to_string(), |l| l.local.clone());
        coalescing = coalescing.with("listener", address, gauge((*on).into()));
    }
    registry.register(
        "accept_coalescing",
        "Round-robin: 1 while the listener's accept loop coalesces wake-ups (the governor \
         found it pays, is probing it, or accept_coalesce_always)",
        coalescing,
    );

    // Per slot: its current worker.
    registry.register(
        "worker_connections",
        "Connections handed to the slot's current worker",
        per_slot(&stats, |w| Some(gauge(w.connections))),
    );
    registry.register(
        "worker_connections_served",
        "Connections handed to the slot's current worker that it kept (not taken back)",
        per_slot(&stats, |w| Some(counter(w.connections_served))),
    );
    registry.register(
        "worker_connections_in_flight",
        "Round-robin: connections handed to the slot's current worker and not acknowledged \
         yet (acks come in batches); proxy: relays open to it",
        per_slot(&stats, |w| Some(gauge(w.connections_in_flight))),
    );
    registry.register(
        "worker_resident_memory_bytes",
        "Resident memory of the slot's current worker",
        per_slot(&stats, |w| w.rss_bytes.map(gauge)),
    );
    registry.register(
        "worker_cpu_seconds",
        "CPU time (user and system) of the slot's current worker",
        per_slot(&stats, |w| w.cpu_seconds.map(ConstCounter::new)),
    );

    let mut text = String::new();
    let _ = encode(&mut text, &registry);
    text
}

/// `starting`, `online`, `ready`, ...: the state as it is serialized.
fn state_name(state: WorkerState) -> String {
    serde_json::to_value(state)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default()
}
