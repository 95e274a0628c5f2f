//! The view model of `forkline top`, free of the terminal: the status answers
//! (`forkline::control::Status`), the rates computed between two of them (accepts and
//! connections served per second), the history of the accept rate for the sparkline, and the
//! text of every line and cell the view shows.

use std::collections::VecDeque;

use forkline::control::{Done, Reply, Scaled, SlotStatus, Status};

use crate::control;

/// How many accept-rate samples the sparkline keeps (one per refresh).
pub const HISTORY: usize = 60;

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

/// The status answers seen so far, reduced to what the view shows.
#[derive(Debug, Default)]
pub struct Model {
    /// The latest status.
    current: Option<Status>,
    /// Accepts per second between the last two statuses.
    accept_rate: Option<f64>,
    /// Connections served per second between the last two statuses.
    served_rate: Option<f64>,
    /// The last [`HISTORY`] accept rates, oldest first.
    history: VecDeque<f64>,
}

impl Model {
    /// A model that has seen nothing yet.
    pub fn new() -> Model {
        Model::default()
    }

    /// Takes a new status in. Rates are measured on the primary's own clock (`uptime_secs`);
    /// another primary (a different pid: the cluster was started again) or a clock that did not
    /// move starts the history afresh.
    pub fn update(&mut self, status: Status) {
        let previous = self.current.take();
        let elapsed = previous.as_ref().and_then(|p| {
            let dt = status.uptime_secs - p.uptime_secs;
            (p.pid == status.pid && dt > 0.0).then_some(dt)
        });
        match (previous, elapsed) {
            (Some(previous), Some(dt)) => {
                let accepted = status
                    .accepted_total
                    .saturating_sub(previous.accepted_total);
                self.accept_rate = Some(accepted as f64 / dt);
                self.served_rate = worker_delta(&previous, &status, |w| w.connections_served)
                    .map(|d| d as f64 / dt);
                if let Some(rate) = self.accept_rate {
                    self.history.push_back(rate);
                    while self.history.len() > HISTORY {
                        self.history.pop_front();
                    }
                }
            }
            (previous, _) => {
                if previous.is_some_and(|p| p.pid != status.pid) {
                    self.history.clear();
                }
                self.accept_rate = None;
                self.served_rate = None;
            }
        }
        self.current = Some(status);
    }

    /// Accepts per second over the last refresh.
    pub fn accept_rate(&self) -> Option<f64> {
        self.accept_rate
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

    /// True while the primary says a reload is running (`None`: no status yet).
    pub fn reloading(&self) -> Option<bool> {
        Some(self.current.as_ref()?.reloading)
    }

    /// The first line: name, primary pid, mode, workers ready, uptime, addresses.
    pub fn header(&self, name: &str) -> String {
        let Some(s) = &self.current else {
            return format!("{name}: waiting for the first status");
        };
        let name = s.name.as_deref().unwrap_or(name);
        let mut line = format!(
            "{name}: primary pid {}, {} mode, {}/{} workers ready, up {}",
            s.pid,
            s.mode.as_str(),
            s.ready,
            s.target,
            control::format_uptime(s.uptime_secs),
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
        let restarts: u64 = s.workers.iter().map(|w| w.restarts).sum();
        format!(
            "accepted {}  handed off {}  redispatched {}  accept errors {}  restarts {}  \
             served {}/s",
            s.accepted_total,
            s.handed_off_total,
            s.redispatched_total,
            s.accept_errors_total,
            restarts,
            control::or_dash(self.served_rate().map(rate)),
        )
    }

    /// The sparkline's title: the rate now and its peak, and what it counts.
    pub fn rate_title(&self) -> String {
        let now = control::or_dash(self.accept_rate().map(rate));
        let peak = control::or_dash(self.peak().map(rate));
        let mut title = format!(
            "accepts/s: {now} now, {peak} peak over the last {} samples",
            self.history.len()
        );
        if self
            .current
            .as_ref()
            .is_some_and(|s| s.mode.workers_accept())
        {
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
                    w.slot.to_string(),
                    control::or_dash(w.pid),
                    control::slot_state(w),
                    control::or_dash(w.uptime_secs.map(control::format_uptime)),
                    w.restarts.to_string(),
                    w.connections.to_string(),
                    w.connections_in_flight.to_string(),
                    w.connections_served.to_string(),
                    control::or_dash(w.rss_bytes.map(control::format_bytes)),
                    control::or_dash(w.cpu_percent.map(|p| format!("{p:.1}"))),
                ]
            })
            .collect()
    }
}

/// The sum over the current workers of how much `count` grew since `before`: a worker seen
/// before (the same pid) adds its growth, a new one all of its count. `None` when no worker
/// runs (nothing says whether it would).
fn worker_delta(before: &Status, now: &Status, count: impl Fn(&SlotStatus) -> u64) -> Option<u64> {
    let running: Vec<&SlotStatus> = now.workers.iter().filter(|w| w.pid.is_some()).collect();
    if running.is_empty() {
        return None;
    }
    let mut total = 0u64;
    for worker in running {
        let earlier = before
            .workers
            .iter()
            .find(|w| w.pid == worker.pid)
            .map_or(0, &count);
        total = total.saturating_add(count(worker).saturating_sub(earlier));
    }
    Some(total)
}

/// A rate with one decimal.
pub fn rate(per_sec: f64) -> String {
    format!("{per_sec:.1}")
}

/// The status line after a reload: `(true, "reload done: ...")` or `(false, why)`.
pub fn reload_outcome(reply: &Reply<Done>, secs: f64) -> (bool, String) {
    match reply {
        Reply::Ok(_) => (
            true,
            format!("reload done: every worker replaced ({secs:.1}s)"),
        ),
        Reply::Failed(failure) => match failure.slot {
            Some(slot) => (
                false,
                format!("reload failed at slot {slot}: {failure}; the old worker keeps serving"),
            ),
            None => (false, format!("reload failed: {failure}")),
        },
    }
}

/// The status line after a scale request.
pub fn scale_outcome(reply: &Reply<Scaled>) -> (bool, String) {
    match reply {
        Reply::Ok(scaled) => (true, format!("scaled to {} workers", scaled.workers)),
        Reply::Failed(failure) => (false, format!("scale refused: {failure}")),
    }
}

#[cfg(test)]
mod tests {
    use forkline::control::Failure;
    use forkline::{Mode, WorkerState};

    use super::*;

    /// A slot whose worker `pid` is ready, having been handed `connections` and served `served`.
    fn slot(slot: usize, pid: u32, connections: u64, served: u64) -> SlotStatus {
        let mut w = SlotStatus::default();
        w.slot = slot;
        w.pid = Some(pid);
        w.state = Some(WorkerState::Ready);
        w.connections = connections;
        w.connections_served = served;
        w.connections_in_flight = 2;
        w.cpu_percent = Some(12.345);
        w
    }

    /// A round-robin primary (pid 10) up `uptime` seconds that accepted `accepted`
    /// connections, with a worker per (pid, served).
    fn status(uptime: f64, accepted: u64, served: &[(u32, u64)]) -> Status {
        let mut s = Status::default();
        s.pid = 10;
        s.mode = Mode::RoundRobin;
        s.uptime_secs = uptime;
        s.accepted_total = accepted;
        s.handed_off_total = accepted;
        s.redispatched_total = 1;
        s.workers = served
            .iter()
            .enumerate()
            .map(|(i, (pid, served))| slot(i, *pid, *served, *served))
            .collect();
        s
    }

    #[test]
    fn a_status_reply_of_today_shows_as_the_header_and_rows() {
        // As a primary in proxy mode sends it: the second worker's values are absent.
        let reply = r#"{"ok":true,"name":"web","pid":10,"mode":"proxy","steering":null,
            "addresses":["127.0.0.1:8080"],"uptime_secs":5.0,"target":2,"ready":1,
            "notify_rejected":0,"reuseport_migration":null,"accepted_total":7,
            "handed_off_total":7,"redispatched_total":0,"accept_errors_total":0,
            "reloading":false,"workers":[
            {"slot":0,"pid":100,"state":"ready","uptime_secs":3.0,"restarts":1,
             "connections":3,"connections_in_flight":0,"connections_served":3,
             "rss_bytes":2048,"cpu_seconds":0.1,"cpu_percent":null,"replacement_pid":null,
             "crash_loop":false,"gave_up":false},
            {"slot":1,"pid":null,"state":null,"uptime_secs":null,"restarts":4,
             "connections":0,"connections_in_flight":0,"connections_served":0,
             "rss_bytes":null,"cpu_seconds":null,"cpu_percent":null,"replacement_pid":null,
             "crash_loop":true,"gave_up":false}]}"#;
        let status = serde_json::from_str::<Reply<Status>>(reply)
            .unwrap()
            .into_result()
            .unwrap();
        let mut model = Model::new();
        model.update(status);
        assert_eq!(
            model.rows(),
            vec![
                ["0", "100", "ready", "3s", "1", "3", "0", "3", "2.0K", "-"].map(String::from),
                [
                    "1",
                    "-",
                    "- (crash loop)",
                    "-",
                    "4",
                    "0",
                    "0",
                    "0",
                    "-",
                    "-"
                ]
                .map(String::from),
            ]
        );
        assert_eq!(
            model.counters(),
            "accepted 7  handed off 7  redispatched 0  accept errors 0  restarts 5  served -/s"
        );
        assert_eq!(
            model.header("x"),
            "web: primary pid 10, proxy mode, 1/2 workers ready, up 5s, on 127.0.0.1:8080"
        );
        assert_eq!(model.accept_rate(), None, "one sample has no rate");
        assert_eq!(model.reloading(), Some(false));
        assert_eq!(Model::new().reloading(), None);
    }

    #[test]
    fn rates_from_accepted_total_and_served() {
        let mut model = Model::new();
        model.update(status(1.0, 100, &[(100, 40), (101, 50)]));
        model.update(status(1.5, 150, &[(100, 50), (101, 60)]));
        assert_eq!(model.accept_rate(), Some(100.0));
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
    fn served_counts_a_new_worker_from_zero_and_needs_a_running_one() {
        let mut model = Model::new();
        model.update(status(10.0, 0, &[(100, 10), (101, 20)]));
        // Slot 1 replaced (a new pid, counting from 0): its 3 count; nothing goes negative.
        model.update(status(11.0, 0, &[(100, 16), (102, 3)]));
        assert_eq!(model.served_rate(), Some(9.0));
        // No worker running: no rate, rather than a made-up 0.
        model.update(status(12.0, 0, &[]));
        assert_eq!(model.served_rate(), None);
        assert_eq!(model.accept_rate(), Some(0.0));
    }

    #[test]
    fn workers_accepting_by_themselves_are_not_counted() {
        let mut model = Model::new();
        let mut shared = status(1.0, 0, &[(100, 0)]);
        shared.mode = Mode::Shared;
        model.update(shared);
        assert!(model
            .rate_title()
            .ends_with("(workers accept by themselves in this mode: not counted)"));
    }

    #[test]
    fn history_keeps_the_last_samples_and_restarts_with_a_new_primary() {
        let mut model = Model::new();
        for i in 0..=(HISTORY as u64 + 10) {
            model.update(status(i as f64, i * i, &[(100, 0)]));
        }
        let history: Vec<f64> = model.history().collect();
        assert_eq!(history.len(), HISTORY);
        assert_eq!(*history.last().unwrap(), (2 * (HISTORY + 10) - 1) as f64);
        // A clock that did not move: no rate, the history stays.
        model.update(status((HISTORY + 10) as f64, 0, &[(100, 0)]));
        assert_eq!(model.accept_rate(), None);
        assert_eq!(model.history().count(), HISTORY);
        // Another primary: the history starts again.
        let mut other = status(0.5, 0, &[(200, 0)]);
        other.pid = 11;
        model.update(other);
        assert_eq!(model.history().count(), 0);
        assert_eq!(model.accept_rate(), None);
    }

    #[test]
    fn outcomes() {
        let read_done = |line: &str| serde_json::from_str::<Reply<Done>>(line).unwrap();
        let read_scaled = |line: &str| serde_json::from_str::<Reply<Scaled>>(line).unwrap();
        assert_eq!(
            reload_outcome(&read_done(r#"{"ok":true}"#), 2.26),
            (true, "reload done: every worker replaced (2.3s)".into())
        );
        assert_eq!(
            reload_outcome(
                &read_done(
                    r#"{"ok":false,"slot":1,"error":"slot 1: the new worker exited with code 1"}"#
                ),
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
            reload_outcome(&Reply::Failed(Failure::new("stopping")), 1.0).1,
            "reload failed: stopping"
        );
        assert_eq!(
            scale_outcome(&read_scaled(r#"{"ok":true,"workers":3}"#)),
            (true, "scaled to 3 workers".into())
        );
        assert_eq!(
            scale_outcome(&read_scaled(
                r#"{"ok":false,"error":"a cluster needs at least 1 worker"}"#
            )),
            (
                false,
                "scale refused: a cluster needs at least 1 worker".into()
            )
        );
    }
}
