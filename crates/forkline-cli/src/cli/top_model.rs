//! The view model of `forkline top`, free of the terminal: the status replies as typed
//! snapshots, the rates computed between two of them (accepts and connections served per
//! second), the history of the accept rate for the sparkline, and the text of every line and
//! cell the view shows. Fields the primary may not send (older primaries) read as absent and
//! show as `-`.

use std::collections::VecDeque;

use serde::Deserialize;
use serde_json::Value;

use crate::control;

/// How many accept-rate samples the sparkline keeps (one per refresh).
pub const HISTORY: usize = 60;

/// The text of a value the primary did not send.
pub const ABSENT: &str = "-";

/// One `status` reply (docs/CONTROL.md); every field may be missing.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Snapshot {
    /// The cluster's name.
    pub name: Option<String>,
    /// The primary's pid.
    pub pid: Option<u64>,
    /// The distribution mode (`shared`, `reuseport`, `proxy`, `round-robin`).
    pub mode: Option<String>,
    /// The addresses it listens on.
    pub addresses: Vec<String>,
    /// How long the primary has run: the clock the rates are measured on.
    pub uptime_secs: Option<f64>,
    /// Worker slots kept.
    pub target: Option<u64>,
    /// Workers ready.
    pub ready: Option<u64>,
    /// One entry per slot.
    pub workers: Vec<WorkerSnapshot>,
    /// Connections the primary accepted so far (proxy and round-robin modes).
    pub accepted_total: Option<u64>,
    /// Connections handed to workers so far.
    pub handed_off_total: Option<u64>,
    /// Connections taken back from a worker and handed to another.
    pub redispatched_total: Option<u64>,
    /// Failed accepts so far.
    pub accept_errors_total: Option<u64>,
    /// True while a rolling reload runs (whoever asked for it).
    pub reloading: Option<bool>,
}

/// One slot of a [`Snapshot`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct WorkerSnapshot {
    /// The slot.
    pub slot: Option<u64>,
    /// Its worker's pid, while one runs.
    pub pid: Option<u64>,
    /// Its state.
    pub state: Option<String>,
    /// How long its worker has run.
    pub uptime_secs: Option<f64>,
    /// The slot's restarts so far.
    pub restarts: Option<u64>,
    /// Connections handed to the current worker.
    pub connections: Option<u64>,
    /// Connections the worker holds open now.
    pub connections_in_flight: Option<u64>,
    /// Connections the worker finished.
    pub connections_served: Option<u64>,
    /// Its CPU use over the last sampling period, in percent of one core.
    pub cpu_percent: Option<f64>,
    /// Its resident memory.
    pub rss_bytes: Option<u64>,
    /// A replacement on trial beside it.
    pub replacement_pid: Option<u64>,
    /// True while the slot keeps dying young.
    pub crash_loop: bool,
    /// True once the slot gave up restarting.
    pub gave_up: bool,
}

impl Snapshot {
    /// Reads a `status` reply.
    pub fn from_reply(reply: Value) -> Result<Snapshot, String> {
        serde_json::from_value(reply).map_err(|e| format!("unexpected status reply: {e}"))
    }
}

/// What the accept rate is counted from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptSource {
    /// The primary's `accepted_total`.
    Accepted,
    /// The sum of the workers' `connections` (a primary without `accepted_total`).
    WorkerConnections,
}

/// The column titles of the worker table.
pub const COLUMNS: [&str; 10] = [
    "SLOT",
    "PID",
    "STATE",
    "UPTIME",
    "RESTARTS",
    "CONNECTIONS",
    "IN-FLIGHT",
    "SERVED",
    "RSS",
    "CPU%",
];

/// The snapshots seen so far, reduced to what the view shows.
#[derive(Debug, Default)]
pub struct Model {
    /// The latest snapshot.
    current: Option<Snapshot>,
    /// Accepts per second between the last two snapshots.
    accept_rate: Option<f64>,
    /// What [`Model::accept_rate`] was counted from.
    accept_source: Option<AcceptSource>,
    /// Connections served per second between the last two snapshots.
    served_rate: Option<f64>,
    /// The last [`HISTORY`] accept rates, oldest first.
    history: VecDeque<f64>,
}

impl Model {
    /// A model that has seen nothing yet.
    pub fn new() -> Model {
        Model::default()
    }

    /// Takes a new snapshot in. Rates are measured on the primary's own clock (`uptime_secs`);
    /// another primary (a different pid: the cluster was started again) or a clock that did not
    /// move starts the history afresh.
    pub fn update(&mut self, snapshot: Snapshot) {
        let previous = self.current.take();
        let elapsed = previous.as_ref().and_then(|p| {
            let dt = snapshot.uptime_secs? - p.uptime_secs?;
            (p.pid == snapshot.pid && dt > 0.0).then_some(dt)
        });
        match (previous, elapsed) {
            (Some(previous), Some(dt)) => {
                let accepted = match (previous.accepted_total, snapshot.accepted_total) {
                    (Some(before), Some(now)) => {
                        Some((now.saturating_sub(before), AcceptSource::Accepted))
                    }
                    _ => worker_delta(&previous, &snapshot, |w| w.connections)
                        .map(|d| (d, AcceptSource::WorkerConnections)),
                };
                self.accept_rate = accepted.map(|(d, _)| d as f64 / dt);
                self.accept_source = accepted.map(|(_, source)| source);
                self.served_rate = worker_delta(&previous, &snapshot, |w| w.connections_served)
                    .map(|d| d as f64 / dt);
                if let Some(rate) = self.accept_rate {
                    self.history.push_back(rate);
                    while self.history.len() > HISTORY {
                        self.history.pop_front();
                    }
                }
            }
            (previous, _) => {
                if previous.is_some_and(|p| p.pid != snapshot.pid) {
                    self.history.clear();
                }
                self.accept_rate = None;
                self.served_rate = None;
            }
        }
        self.current = Some(snapshot);
    }

    /// Accepts per second over the last refresh, and what they were counted from.
    pub fn accept_rate(&self) -> Option<(f64, AcceptSource)> {
        Some((self.accept_rate?, self.accept_source?))
    }

    /// Connections served per second over the last refresh.
    pub fn served_rate(&self) -> Option<f64> {
        self.served_rate
    }

    /// The accept rates kept for the sparkline, oldest first.
    pub fn history(&self) -> impl DoubleEndedIterator<Item = f64> + '_ {
        self.history.iter().copied()
    }

    /// The highest accept rate kept.
    pub fn peak(&self) -> Option<f64> {
        self.history.iter().copied().reduce(f64::max)
    }

    /// True while the primary says a reload is running (`None`: it does not say).
    pub fn reloading(&self) -> Option<bool> {
        self.current.as_ref()?.reloading
    }

    /// The first line: name, primary pid, mode, workers ready, uptime, addresses.
    pub fn header(&self, name: &str) -> String {
        let Some(s) = &self.current else {
            return format!("{name}: waiting for the first status");
        };
        let name = s.name.as_deref().unwrap_or(name);
        let mut line = format!(
            "{name}: primary pid {}, {} mode, {}/{} workers ready, up {}",
            opt(s.pid),
            s.mode.as_deref().unwrap_or(ABSENT),
            opt(s.ready),
            opt(s.target),
            s.uptime_secs
                .map(control::format_uptime)
                .unwrap_or_else(|| ABSENT.into()),
        );
        if !s.addresses.is_empty() {
            line.push_str(&format!(", on {}", s.addresses.join(", ")));
        }
        line
    }

    /// The counters line: cluster totals, restarts and the served rate.
    pub fn counters(&self) -> String {
        let Some(s) = &self.current else {
            return String::new();
        };
        let restarts: u64 = s.workers.iter().filter_map(|w| w.restarts).sum();
        format!(
            "accepted {}  handed off {}  redispatched {}  accept errors {}  restarts {}  \
             served {}/s",
            opt(s.accepted_total),
            opt(s.handed_off_total),
            opt(s.redispatched_total),
            opt(s.accept_errors_total),
            restarts,
            self.served_rate()
                .map(rate)
                .unwrap_or_else(|| ABSENT.into()),
        )
    }

    /// The sparkline's title: the rate now and its peak, and what it counts.
    pub fn rate_title(&self) -> String {
        let (what, now) = match self.accept_rate() {
            Some((now, AcceptSource::WorkerConnections)) => {
                ("connections handed to workers/s", rate(now))
            }
            Some((now, AcceptSource::Accepted)) => ("accepts/s", rate(now)),
            None => ("accepts/s", ABSENT.into()),
        };
        let peak = self.peak().map(rate).unwrap_or_else(|| ABSENT.into());
        let mut title = format!(
            "{what}: {now} now, {peak} peak over the last {} samples",
            self.history.len()
        );
        let shared = self
            .current
            .as_ref()
            .and_then(|s| s.mode.as_deref())
            .and_then(|s| s.parse::<forkline::Mode>().ok())
            .is_some_and(forkline::Mode::workers_accept);
        if shared {
            title.push_str(" (workers accept by themselves in this mode: not counted)");
        }
        title
    }

    /// One row of cells per slot, in the order of [`COLUMNS`].
    pub fn rows(&self) -> Vec<[String; 10]> {
        let Some(s) = &self.current else {
            return Vec::new();
        };
        s.workers
            .iter()
            .map(|w| {
                [
                    opt(w.slot),
                    opt(w.pid),
                    state(w),
                    w.uptime_secs
                        .map(control::format_uptime)
                        .unwrap_or_else(|| ABSENT.into()),
                    opt(w.restarts),
                    opt(w.connections),
                    opt(w.connections_in_flight),
                    opt(w.connections_served),
                    w.rss_bytes
                        .map(control::format_bytes)
                        .unwrap_or_else(|| ABSENT.into()),
                    w.cpu_percent
                        .map(|p| format!("{p:.1}"))
                        .unwrap_or_else(|| ABSENT.into()),
                ]
            })
            .collect()
    }
}

/// The sum over the current workers of how much `count` grew since `before`: a worker seen
/// before (the same pid) adds its growth, a new one all of its count. `None` when a worker does
/// not report it, or when no worker runs (nothing says whether it would).
fn worker_delta(
    before: &Snapshot,
    now: &Snapshot,
    count: impl Fn(&WorkerSnapshot) -> Option<u64>,
) -> Option<u64> {
    let running: Vec<&WorkerSnapshot> = now.workers.iter().filter(|w| w.pid.is_some()).collect();
    if running.is_empty() {
        return None;
    }
    let mut total = 0u64;
    for worker in running {
        let current = count(worker)?;
        let earlier = before
            .workers
            .iter()
            .find(|w| w.pid == worker.pid)
            .and_then(&count)
            .unwrap_or(0);
        total = total.saturating_add(current.saturating_sub(earlier));
    }
    Some(total)
}

/// A worker's state as the table shows it: `gave-up`, `(crash loop)`, `(replacing: PID)`.
fn state(w: &WorkerSnapshot) -> String {
    if w.gave_up {
        return "gave-up".into();
    }
    let mut state = w.state.clone().unwrap_or_else(|| ABSENT.into());
    if w.crash_loop {
        state.push_str(" (crash loop)");
    }
    if let Some(pid) = w.replacement_pid {
        state.push_str(&format!(" (replacing: {pid})"));
    }
    state
}

/// A number, or `-`.
fn opt(value: Option<u64>) -> String {
    value
        .map(|v| v.to_string())
        .unwrap_or_else(|| ABSENT.into())
}

/// A rate with one decimal.
pub fn rate(per_sec: f64) -> String {
    format!("{per_sec:.1}")
}

/// The status line after a reload: `(true, "reload done: ...")` or `(false, why)`.
pub fn reload_outcome(reply: &Value, secs: f64) -> (bool, String) {
    if reply["ok"] == Value::Bool(true) {
        return (
            true,
            format!("reload done: every worker replaced ({secs:.1}s)"),
        );
    }
    let error = reply["error"].as_str().unwrap_or("the reload failed");
    let text = match reply["slot"].as_u64() {
        Some(slot) => {
            format!("reload failed at slot {slot}: {error}; the old worker keeps serving")
        }
        None => format!("reload failed: {error}"),
    };
    (false, text)
}

/// The status line after a scale request.
pub fn scale_outcome(reply: &Value) -> (bool, String) {
    if reply["ok"] == Value::Bool(true) {
        return match reply["workers"].as_u64() {
            Some(n) => (true, format!("scaled to {n} workers")),
            None => (true, "scaled".into()),
        };
    }
    let error = reply["error"].as_str().unwrap_or("the cluster refused");
    (false, format!("scale refused: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn snap(value: Value) -> Snapshot {
        Snapshot::from_reply(value).unwrap()
    }

    /// A primary of today: no accepted_total, workers with `connections` only.
    fn old(uptime: f64, workers: &[(u64, u64)]) -> Snapshot {
        let workers: Vec<Value> = workers
            .iter()
            .enumerate()
            .map(|(slot, (pid, conns))| {
                json!({"slot": slot, "pid": pid, "state": "ready", "uptime_secs": 3.0,
                       "restarts": 1, "connections": conns, "rss_bytes": 2048,
                       "replacement_pid": null, "crash_loop": false, "gave_up": false})
            })
            .collect();
        snap(
            json!({"ok": true, "name": "web", "pid": 10, "mode": "proxy",
                    "addresses": ["127.0.0.1:8080"], "uptime_secs": uptime, "target": 2,
                    "ready": 2, "notify_rejected": 0, "workers": workers}),
        )
    }

    /// A primary with the counters: accepted_total and per-worker served/in-flight/cpu.
    fn new(uptime: f64, accepted: u64, served: &[(u64, u64)]) -> Snapshot {
        let workers: Vec<Value> = served
            .iter()
            .enumerate()
            .map(|(slot, (pid, served))| {
                json!({"slot": slot, "pid": pid, "state": "ready", "connections": served,
                       "connections_in_flight": 2, "connections_served": served,
                       "cpu_percent": 12.345})
            })
            .collect();
        snap(
            json!({"pid": 10, "mode": "round-robin", "uptime_secs": uptime,
                    "accepted_total": accepted, "handed_off_total": accepted,
                    "redispatched_total": 1, "accept_errors_total": 0, "reloading": false,
                    "workers": workers}),
        )
    }

    #[test]
    fn missing_fields_show_as_dashes() {
        let mut model = Model::new();
        model.update(old(5.0, &[(100, 3), (101, 4)]));
        let rows = model.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ["0", "100", "ready", "3s", "1", "3", "-", "-", "2.0K", "-"].map(String::from)
        );
        assert_eq!(
            model.counters(),
            "accepted -  handed off -  redispatched -  accept errors -  restarts 2  served -/s"
        );
        assert_eq!(
            model.header("x"),
            "web: primary pid 10, proxy mode, 2/2 workers ready, up 5s, on 127.0.0.1:8080"
        );
        assert_eq!(model.accept_rate(), None, "one sample has no rate");
        assert_eq!(model.reloading(), None);
        // Even an empty object reads.
        model.update(snap(json!({})));
        assert!(model.rows().is_empty());
        assert!(Snapshot::from_reply(json!({"workers": 3})).is_err());
    }

    #[test]
    fn rates_from_the_workers_connections_when_accepted_total_is_absent() {
        let mut model = Model::new();
        model.update(old(10.0, &[(100, 10), (101, 20)]));
        // 2 s later: +6 and +4.
        model.update(old(12.0, &[(100, 16), (101, 24)]));
        assert_eq!(
            model.accept_rate(),
            Some((5.0, AcceptSource::WorkerConnections))
        );
        assert!(model
            .rate_title()
            .starts_with("connections handed to workers/s: 5.0 now"));
        // Slot 1 replaced (a new pid, counting from 0): its 3 count; nothing goes negative.
        model.update(old(13.0, &[(100, 16), (102, 3)]));
        assert_eq!(
            model.accept_rate(),
            Some((3.0, AcceptSource::WorkerConnections))
        );
        assert_eq!(model.history().collect::<Vec<_>>(), vec![5.0, 3.0]);
        // No worker running: no rate, rather than a made-up 0.
        model.update(old(14.0, &[]));
        assert_eq!(model.accept_rate(), None);
        assert_eq!(model.peak(), Some(5.0));
        assert_eq!(model.served_rate(), None);
    }

    #[test]
    fn rates_from_accepted_total_and_served() {
        let mut model = Model::new();
        model.update(new(1.0, 100, &[(100, 40), (101, 50)]));
        model.update(new(1.5, 150, &[(100, 50), (101, 60)]));
        assert_eq!(model.accept_rate(), Some((100.0, AcceptSource::Accepted)));
        assert_eq!(model.served_rate(), Some(40.0));
        assert_eq!(
            model.counters(),
            "accepted 150  handed off 150  redispatched 1  accept errors 0  restarts 0  \
             served 40.0/s"
        );
        assert_eq!(model.rows()[1][6..].to_vec(), ["2", "60", "-", "12.3"]);
        assert!(model
            .rate_title()
            .starts_with("accepts/s: 100.0 now, 100.0 peak"));
        assert_eq!(model.reloading(), Some(false));
    }

    #[test]
    fn history_keeps_the_last_samples_and_restarts_with_a_new_primary() {
        let mut model = Model::new();
        for i in 0..=(HISTORY as u64 + 10) {
            model.update(new(i as f64, i * i, &[(100, 0)]));
        }
        let history: Vec<f64> = model.history().collect();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(*history.last().unwrap(), (2 * (HISTORY + 10) - 1) as f64);
        // A clock that did not move: no rate, the history stays.
        model.update(new((HISTORY + 10) as f64, 0, &[(100, 0)]));
        assert_eq!(model.accept_rate(), None);
        assert_eq!(model.history().count(), HISTORY);
        // Another primary: the history starts again.
        let mut other = new(0.5, 0, &[(200, 0)]);
        other.pid = Some(11);
        model.update(other);
        assert_eq!(model.history().count(), 0);
        assert_eq!(model.accept_rate(), None);
    }

    #[test]
    fn states() {
        let mut w = WorkerSnapshot {
            state: Some("ready".into()),
            crash_loop: true,
            replacement_pid: Some(7),
            ..Default::default()
        };
        assert_eq!(state(&w), "ready (crash loop) (replacing: 7)");
        w.gave_up = true;
        assert_eq!(state(&w), "gave-up");
    }

    #[test]
    fn outcomes() {
        assert_eq!(
            reload_outcome(&json!({"ok": true}), 2.26),
            (true, "reload done: every worker replaced (2.3s)".into())
        );
        assert_eq!(
            reload_outcome(
                &json!({"ok": false, "slot": 1, "error": "slot 1: the new worker exited with code 1"}),
                1.0
            ),
            (
                false,
                "reload failed at slot 1: slot 1: the new worker exited with code 1; the old \
                 worker keeps serving"
                    .into()
            )
        );
        assert_eq!(
            reload_outcome(&json!({"ok": false, "error": "stopping"}), 1.0).1,
            "reload failed: stopping"
        );
        assert_eq!(
            scale_outcome(&json!({"ok": true, "workers": 3})),
            (true, "scaled to 3 workers".into())
        );
        assert_eq!(
            scale_outcome(&json!({"ok": false, "error": "a cluster needs at least 1 worker"})),
            (
                false,
                "scale refused: a cluster needs at least 1 worker".into()
            )
        );
    }
}
