//! The connection counters the round-robin dispatcher and the proxy keep (accepts, handoffs,
//! accept errors by kind, handoff latency), added up for `Cluster::stats` and `/metrics`.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

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
    pub(crate) fn add(&mut self, other: Traffic) {
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
    pub(crate) const ALL: [AcceptErrorKind; 3] = [
        AcceptErrorKind::FdLimit,
        AcceptErrorKind::NoMemory,
        AcceptErrorKind::Other,
    ];

    /// The kind of `error`.
    pub(crate) fn of(error: &io::Error) -> Self {
        match error.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => AcceptErrorKind::FdLimit,
            Some(libc::ENOBUFS | libc::ENOMEM) => AcceptErrorKind::NoMemory,
            _ => AcceptErrorKind::Other,
        }
    }

    /// Its index in `ALL` (and in `Traffic::accept_errors`).
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The label value: `fd_limit`, `no_memory`, `other`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // used by `/metrics`
    pub(crate) fn name(self) -> &'static str {
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
    pub(crate) fn observe(&mut self, latency: Duration) {
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[bucket] += 1;
        self.sum += secs;
        self.count += 1;
    }

    pub(crate) fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
        self.sum += other.sum;
        self.count += other.count;
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
