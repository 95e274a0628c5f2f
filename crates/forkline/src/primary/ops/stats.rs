//! `Cluster::stats()`: a snapshot of the cluster and each of its workers, for status commands,
//! the control socket and monitoring. Also the connection counters' snapshot (`Traffic`) that
//! the dispatcher and the proxy hand out, and the small types behind it: the handoff latency
//! histogram, accept error kinds, and the CPU window of each worker.
//!
//! Nothing here runs on the connection path: the dispatcher keeps its counters as plain
//! integers under the lock it already takes once per batch, the proxy in a few relaxed
//! atomics, and a snapshot is taken only when someone asks (a scrape, `forkline status`).

use std::collections::BTreeMap;
use std::io;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::primary::cluster::Cluster;
use crate::primary::handle::WorkerState;
use crate::primary::lifecycle::recycle::resident_bytes;

/// The cluster at one moment.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// The cluster's name (`ClusterBuilder::name`), if it has one.
    pub name: Option<String>,
    /// The primary's process id.
    pub pid: u32,
    /// The distribution mode.
    pub mode: &'static str,
    /// Steer mode: how connections are steered (`Cluster::steering`): `bpf-round-robin`,
    /// `bpf-least-conn`, or the fallback taken where BPF was refused (`fallback-round-robin`,
    /// `fallback-reuseport`). `None` in other modes.
    pub steering: Option<&'static str>,
    /// The addresses it listens on.
    pub addresses: Vec<String>,
    /// How long the primary has run, in seconds.
    pub uptime_secs: f64,
    /// The number of worker slots it keeps.
    pub target: usize,
    /// Workers ready to serve.
    pub ready: usize,
    /// One entry per slot.
    pub workers: Vec<WorkerStats>,
    /// Notify messages dropped because they came from outside a worker's process group.
    pub notify_rejected: u64,
    /// Reuseport mode: how a closing worker's queued connections reach the others (`bpf`,
    /// `sysctl`) or not (`off`); `None` in other modes (or before the first socket).
    pub reuseport_migration: Option<&'static str>,
    /// Connections the primary accepted (round-robin and proxy modes; 0 in shared and
    /// reuseport modes, where the workers accept by themselves).
    pub accepted_total: u64,
    /// Connections handed to a worker: passed over its channel (round-robin) or connected to
    /// its port (proxy). A connection taken back and handed elsewhere counts once per handoff.
    /// 0 in shared and reuseport modes.
    pub handed_off_total: u64,
    /// Connections taken back from a worker and handed to another: round-robin, those a
    /// worker never read because it died or stopped reading, or gave back (its listener was
    /// dropped); proxy, a worker that refused the connection, so the next one got it. 0 in
    /// shared and reuseport modes.
    pub redispatched_total: u64,
    /// Failed `accept` calls of the primary (EMFILE, ENFILE, ENOBUFS, ...). 0 in shared and
    /// reuseport modes.
    pub accept_errors_total: u64,
    /// A rolling reload is in progress.
    pub reloading: bool,
}

/// One slot and its current worker.
#[derive(Debug, Clone, Serialize)]
pub struct WorkerStats {
    /// The slot (the worker's `FORKLINE_WORKER_ID`).
    pub slot: usize,
    /// The current worker's pid, while it runs.
    pub pid: Option<u32>,
    /// Its state.
    pub state: Option<WorkerState>,
    /// How long it has run, in seconds.
    pub uptime_secs: Option<f64>,
    /// The slot's restarts so far.
    pub restarts: u64,
    /// Connections handed to the current worker (round-robin, proxy).
    pub connections: u64,
    /// Connections the current worker holds as far as the primary knows. Round-robin: handed
    /// to it and not acknowledged yet (the credit it uses). Acks come in batches (half the
    /// credit window, at most 32; every packet under least-conn), so up to a batch of
    /// connections the worker already took count here until its next ack. Proxy: relays open
    /// to it. 0 in shared and reuseport modes.
    pub connections_in_flight: u64,
    /// Connections handed to the current worker that it kept: `connections` less those taken
    /// back and served by another worker. 0 in shared and reuseport modes.
    pub connections_served: u64,
    /// Its resident memory, in bytes.
    pub rss_bytes: Option<u64>,
    /// CPU time it used (user and system, from `/proc/PID/stat`), in seconds.
    pub cpu_seconds: Option<f64>,
    /// Its CPU use, in percent of one CPU (100 = one core busy): over the time since the
    /// previous `stats()` call that was at least a second earlier (by any caller: a scrape,
    /// `forkline status`), or since it started on the first call.
    pub cpu_percent: Option<f64>,
    /// A replacement on trial beside it (reload, recycling).
    pub replacement_pid: Option<u32>,
    /// True while the slot keeps dying young.
    pub crash_loop: bool,
    /// True once the slot reached `max_restarts`.
    pub gave_up: bool,
}

impl Cluster {
    /// Rolling reloads so far: (finished, failed).
    pub fn reload_counts(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.inner.reloads_ok.load(Relaxed),
            self.inner.reloads_failed.load(Relaxed),
        )
    }

    /// True while a rolling reload is in progress.
    pub fn is_reloading(&self) -> bool {
        self.inner.reload_lock.try_lock().is_err()
    }

    /// The connection counters of the dispatcher (round-robin) and the proxy, added up: each
    /// mode counts only its own connections.
    pub(crate) fn traffic(&self) -> Traffic {
        let mut traffic = self.inner.dispatcher.traffic();
        traffic.add(self.inner.proxy.traffic());
        traffic
    }

    /// A snapshot of the cluster and each slot's worker.
    pub fn stats(&self) -> Stats {
        self.stats_with(&self.traffic())
    }

    /// `stats()` from a `traffic` snapshot already taken.
    pub(crate) fn stats_with(&self, traffic: &Traffic) -> Stats {
        let now = Instant::now();
        let workers: Vec<WorkerStats> = self
            .status()
            .into_iter()
            .map(|slot| {
                let current = self.worker(slot.id).filter(|w| w.pid() != 0);
                let cpu_ticks = slot
                    .pid
                    .and_then(crate::primary::lifecycle::reaper::stat)
                    .map(|stat| stat.cpu_ticks);
                let cpu_percent = match (&current, cpu_ticks) {
                    (Some(w), Some(ticks)) => w.shared.cpu.lock().unwrap().sample(
                        now,
                        ticks,
                        w.shared.started,
                        ticks_per_second(),
                    ),
                    _ => None,
                };
                WorkerStats {
                    slot: slot.id,
                    pid: slot.pid,
                    state: slot.state,
                    uptime_secs: current.as_ref().map(|w| secs(w.uptime())),
                    restarts: slot.restarts,
                    connections: slot.connections,
                    connections_in_flight: current
                        .as_ref()
                        .and_then(|w| traffic.in_flight.get(&w.unique_id()).copied())
                        .unwrap_or(0),
                    connections_served: current.as_ref().map_or(0, |w| w.connections_served()),
                    rss_bytes: slot.pid.and_then(resident_bytes),
                    cpu_seconds: cpu_ticks.map(|t| t as f64 / ticks_per_second()),
                    cpu_percent,
                    replacement_pid: slot.replacement_pid,
                    crash_loop: slot.crash_loop,
                    gave_up: slot.gave_up,
                }
            })
            .collect();
        Stats {
            name: self.inner.opts.name.clone(),
            pid: std::process::id(),
            mode: self.inner.opts.mode.name(),
            steering: self.steering(),
            addresses: self.listen_addresses(),
            uptime_secs: secs(self.inner.started.elapsed()),
            target: self.target(),
            ready: workers
                .iter()
                .filter(|w| w.state == Some(WorkerState::Ready))
                .count(),
            workers,
            notify_rejected: self.notify_messages_rejected(),
            reuseport_migration: self.reuseport_migration(),
            accepted_total: traffic.accepted,
            handed_off_total: traffic.handed_off,
            redispatched_total: traffic.redispatched,
            accept_errors_total: traffic.accept_errors.iter().sum(),
            reloading: self.is_reloading(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Clock ticks a second, the unit of `/proc/PID/stat`'s CPU times.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64
    })
}

/// The connection counters at one moment (see `Stats` for what each one counts).
#[derive(Debug, Clone, Default)]
pub(crate) struct Traffic {
    pub accepted: u64,
    pub handed_off: u64,
    pub redispatched: u64,
    /// Failed accepts, by `AcceptErrorKind`.
    pub accept_errors: [u64; AcceptErrorKind::ALL.len()],
    /// Connections in flight per worker, by unique id.
    pub in_flight: BTreeMap<u64, u64>,
    /// Time from accept to the worker's ack (round-robin).
    pub latency: LatencyHistogram,
    /// Whether each round-robin accept loop coalesces now, by listener id.
    pub coalescing: BTreeMap<u64, bool>,
}

impl Traffic {
    fn add(&mut self, other: Traffic) {
        self.accepted += other.accepted;
        self.handed_off += other.handed_off;
        self.redispatched += other.redispatched;
        for (mine, theirs) in self.accept_errors.iter_mut().zip(other.accept_errors) {
            *mine += theirs;
        }
        for (worker, n) in other.in_flight {
            *self.in_flight.entry(worker).or_default() += n;
        }
        self.latency.merge(&other.latency);
        self.coalescing.extend(other.coalescing);
    }
}

/// What kind of failure an `accept` was, by errno: the label of
/// `forkline_accept_errors_total{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcceptErrorKind {
    /// EMFILE, ENFILE: the process's or the system's open-file limit.
    FdLimit,
    /// ENOBUFS, ENOMEM: the kernel is short of memory.
    NoMemory,
    /// Anything else.
    Other,
}

impl AcceptErrorKind {
    /// Every kind, in the order of `Traffic::accept_errors`.
    pub const ALL: [AcceptErrorKind; 3] = [
        AcceptErrorKind::FdLimit,
        AcceptErrorKind::NoMemory,
        AcceptErrorKind::Other,
    ];

    /// The kind of `error`.
    pub fn of(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => AcceptErrorKind::FdLimit,
            Some(libc::ENOBUFS | libc::ENOMEM) => AcceptErrorKind::NoMemory,
            _ => AcceptErrorKind::Other,
        }
    }

    /// Its index in `ALL` (and in `Traffic::accept_errors`).
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label value: `fd_limit`, `no_memory`, `other`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // used by `/metrics`
    pub fn name(self) -> &'static str {
        match self {
            AcceptErrorKind::FdLimit => "fd_limit",
            AcceptErrorKind::NoMemory => "no_memory",
            AcceptErrorKind::Other => "other",
        }
    }
}

/// Upper bounds of the handoff latency buckets, in seconds (a last one, +Inf, follows). A
/// handoff on one machine takes tens of microseconds; a stuck worker's, seconds.
pub(crate) const LATENCY_BOUNDS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
    5.0,
];

/// A fixed-bucket histogram of handoff latencies: plain integers, kept by whoever holds it
/// (the dispatcher, under its lock), copied out at scrape time.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LatencyHistogram {
    /// Observations per bucket (not cumulative); the last is +Inf.
    pub buckets: [u64; LATENCY_BOUNDS.len() + 1],
    /// The sum of all observations, in seconds.
    pub sum: f64,
    /// The number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one latency.
    pub fn observe(&mut self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[bucket] += 1;
        self.sum += secs;
        self.count += 1;
    }

    fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
    }
}

/// Shorter than this since the last look, `cpu_percent` reaches back to the look before.
const CPU_WINDOW: Duration = Duration::from_secs(1);

/// The CPU time of a worker at two earlier looks, so that `cpu_percent` is taken over at least
/// `CPU_WINDOW` however often it is asked for (a scrape and `forkline top` at once).
#[derive(Debug, Default)]
pub(crate) struct CpuWindow {
    older: Option<(Instant, u64)>,
    newer: Option<(Instant, u64)>,
}

impl CpuWindow {
    /// Records `ticks` of CPU time at `now` and returns the CPU used, in percent of one CPU,
    /// since the last look at least `CPU_WINDOW` ago, or since `started` while there was none.
    pub fn sample(
        &mut self,
        now: Instant,
        ticks: u64,
        started: Instant,
        ticks_per_second: f64,
    ) -> Option<f64> {
        let base = match self.newer {
            Some(newer) if now.saturating_duration_since(newer.0) >= CPU_WINDOW => {
                self.older = Some(newer);
                self.newer = Some((now, ticks));
                newer
            }
            Some(_) => self.older.unwrap_or((started, 0)),
            None => {
                self.newer = Some((now, ticks));
                (started, 0)
            }
        };
        let secs = now.saturating_duration_since(base.0).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let used = ticks.saturating_sub(base.1) as f64 / ticks_per_second;
        Some((used / secs * 1000.0).round() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_land_in_their_buckets() {
        let mut h = LatencyHistogram::default();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(51));
        h.observe(Duration::from_secs(60));
        assert_eq!(h.buckets[0], 1, "a bound is inclusive");
        assert_eq!(h.buckets[1], 1);
        assert_eq!(h.buckets[LATENCY_BOUNDS.len()], 1, "+Inf");
        assert_eq!(h.count, 3);
        assert!((h.sum - 60.000_101).abs() < 1e-9);
    }

    #[test]
    fn cpu_percent_is_taken_over_at_least_a_window() {
        let started = Instant::now();
        let mut w = CpuWindow::default();
        let at = |ms| started + Duration::from_millis(ms);
        // First look, 2 s after the start with 1 s of CPU: 50 % since the start.
        assert_eq!(w.sample(at(2000), 100, started, 100.0), Some(50.0));
        // 100 ms later: too close, so since the start again (60 % of 2.1 s is 126 ticks).
        assert_eq!(w.sample(at(2100), 126, started, 100.0), Some(60.0));
        // 1 s after the first look: over that second (one full core).
        assert_eq!(w.sample(at(3000), 200, started, 100.0), Some(100.0));
        // Soon after: back to the look before (2 s → 3.5 s, 125 ticks in 1.5 s).
        assert_eq!(w.sample(at(3500), 225, started, 100.0), Some(83.3));
    }

    #[test]
    fn accept_errors_are_classed_by_errno() {
        let kind = |errno| AcceptErrorKind::of(&io::Error::from_raw_os_error(errno));
        assert_eq!(kind(libc::EMFILE), AcceptErrorKind::FdLimit);
        assert_eq!(kind(libc::ENFILE), AcceptErrorKind::FdLimit);
        assert_eq!(kind(libc::ENOBUFS), AcceptErrorKind::NoMemory);
        assert_eq!(kind(libc::EPROTO), AcceptErrorKind::Other);
        for (i, kind) in AcceptErrorKind::ALL.iter().enumerate() {
            assert_eq!(kind.index(), i);
        }
    }
}
