//! Turning [`Totals`] into what people and scripts read: a human summary and a one-line JSON
//! object with the same numbers (`bench/run.sh` parses the JSON).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::client::Failure;
use crate::driver::Totals;

/// Latency percentiles of successful exchanges, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest exchange.
    pub max: f64,
}

/// The result of one load run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Target address.
    pub addr: String,
    /// Number of client threads.
    pub concurrency: usize,
    /// Measured wall time in seconds.
    pub elapsed_s: f64,
    /// Successful responses.
    pub total: u64,
    /// Successful responses per second of wall time.
    pub rps: f64,
    /// Failed exchanges.
    pub errors: u64,
    /// Failed exchanges by kind (every kind is present, zeros included).
    pub error_kinds: BTreeMap<&'static str, u64>,
    /// Distinct worker PIDs that answered.
    pub workers_seen: usize,
    /// Successful responses per worker PID.
    pub per_pid: BTreeMap<u32, u64>,
    /// Coefficient of variation (population stddev / mean) of the per-PID counts, as a
    /// fraction. When the expected worker count is known, workers that never answered count
    /// as zeros, so "one worker got everything" is not reported as perfectly even.
    pub cv: f64,
    /// Latency percentiles.
    pub latency_ms: Latency,
}

impl Report {
    /// Builds a report. `expect_workers`, if set, pads the per-PID counts with zeros up to that
    /// many workers before the CV is computed.
    pub fn new(
        addr: String,
        concurrency: usize,
        mut totals: Totals,
        expect_workers: Option<usize>,
    ) -> Report {
        let total = totals.ok();
        let elapsed_s = totals.elapsed.as_secs_f64();
        let mut counts: Vec<u64> = totals.per_pid.values().copied().collect();
        if let Some(expected) = expect_workers {
            counts.resize(counts.len().max(expected), 0);
        }
        totals.latencies_us.sort_unstable();
        Report {
            addr,
            concurrency,
            elapsed_s,
            total,
            rps: if elapsed_s > 0.0 {
                total as f64 / elapsed_s
            } else {
                0.0
            },
            errors: totals.failed(),
            error_kinds: Failure::ALL
                .iter()
                .map(|f| (f.name(), totals.errors[f.index()]))
                .collect(),
            workers_seen: totals.per_pid.len(),
            per_pid: totals.per_pid.into_iter().collect(),
            cv: coefficient_of_variation(&counts),
            latency_ms: Latency {
                p50: percentile_ms(&totals.latencies_us, 0.50),
                p99: percentile_ms(&totals.latencies_us, 0.99),
                max: percentile_ms(&totals.latencies_us, 1.0),
            },
        }
    }

    /// The report as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report always serializes")
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "loadgen: {} with {} clients for {:.2} s",
            self.addr, self.concurrency, self.elapsed_s
        )?;
        writeln!(
            f,
            "  responses  {:>10}  ({:.1} req/s)",
            self.total, self.rps
        )?;
        let kinds: Vec<String> = self
            .error_kinds
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if kinds.is_empty() {
            writeln!(f, "  errors     {:>10}", self.errors)?;
        } else {
            writeln!(
                f,
                "  errors     {:>10}  ({})",
                self.errors,
                kinds.join(", ")
            )?;
        }
        writeln!(
            f,
            "  latency    p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.latency_ms.p50, self.latency_ms.p99, self.latency_ms.max
        )?;
        writeln!(
            f,
            "  per worker ({} seen, CV {:.2}%):",
            self.workers_seen,
            self.cv * 100.0
        )?;
        for (pid, n) in &self.per_pid {
            let share = if self.total > 0 {
                *n as f64 * 100.0 / self.total as f64
            } else {
                0.0
            };
            writeln!(f, "    worker-{pid:<8} {n:>10}  ({share:.1}%)")?;
        }
        Ok(())
    }
}

/// Population standard deviation divided by the mean; 0 for no data or a zero mean.
pub fn coefficient_of_variation(counts: &[u64]) -> f64 {
    if counts.is_empty() {
        return 0.0;
    }
    let n = counts.len() as f64;
    let mean = counts.iter().sum::<u64>() as f64 / n;
    if mean == 0.0 {
        return 0.0;
    }
    let variance = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    variance.sqrt() / mean
}

/// Nearest-rank percentile of sorted microsecond samples, in milliseconds.
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    sorted_us[rank - 1] as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn cv_of_even_and_skewed_counts() {
        assert_eq!(coefficient_of_variation(&[]), 0.0);
        assert_eq!(coefficient_of_variation(&[5, 5, 5]), 0.0);
        // mean 50, population stddev 50
        assert!((coefficient_of_variation(&[100, 0]) - 1.0).abs() < 1e-12);
        assert!((coefficient_of_variation(&[60, 40]) - 0.2).abs() < 1e-12);
    }

    #[test]
    fn missing_workers_count_as_zero() {
        let mut totals = Totals {
            elapsed: Duration::from_secs(2),
            ..Totals::default()
        };
        totals.per_pid.insert(10, 100);
        totals.latencies_us = vec![3000, 1000, 2000, 4000];
        let even = Report::new("127.0.0.1:1".into(), 1, totals.clone(), None);
        assert_eq!(even.cv, 0.0);
        let skewed = Report::new("127.0.0.1:1".into(), 1, totals, Some(2));
        assert!((skewed.cv - 1.0).abs() < 1e-12);
        assert_eq!(skewed.total, 100);
        assert!((skewed.rps - 50.0).abs() < 1e-9);
        assert_eq!(skewed.latency_ms.p50, 2.0);
        assert_eq!(skewed.latency_ms.max, 4.0);
        let json: serde_json::Value = serde_json::from_str(&skewed.to_json()).unwrap();
        assert_eq!(json["per_pid"]["10"], 100);
        assert_eq!(json["error_kinds"]["refused"], 0);
    }
}
