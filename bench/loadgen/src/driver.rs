//! The load driver: `concurrency` client threads, each running exchanges back to back until the
//! deadline (or until the shared request budget is spent), then merged into one [`Totals`].
//!
//! Plain threads, not async: each client is one blocking exchange at a time, exactly like the
//! seed workload's clients, and 32 threads cost nothing next to the servers under test.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{exchange, ClientOptions, Failure, Rng};

/// After a failed exchange a client waits this long, so a dead server is not spun against.
const ERROR_BACKOFF: Duration = Duration::from_millis(1);

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Per-connection settings.
    pub client: ClientOptions,
    /// Number of client threads, each with one connection in flight.
    pub concurrency: usize,
    /// Stop starting new exchanges after this long.
    pub duration: Duration,
    /// Stop after this many exchanges in total (successful or not), if set.
    pub max_requests: Option<u64>,
}

/// What happened, summed over all clients.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// Wall time from the first start to the last client finishing.
    pub elapsed: Duration,
    /// Successful responses per worker PID.
    pub per_pid: HashMap<u32, u64>,
    /// Failures, indexed by [`Failure::index`].
    pub errors: [u64; Failure::ALL.len()],
    /// Latency of every successful exchange, in microseconds (unsorted).
    pub latencies_us: Vec<u32>,
}

impl Totals {
    /// Number of successful responses.
    pub fn ok(&self) -> u64 {
        self.per_pid.values().sum()
    }

    /// Number of failed exchanges.
    pub fn failed(&self) -> u64 {
        self.errors.iter().sum()
    }

    fn merge(&mut self, other: Totals) {
        for (pid, n) in other.per_pid {
            *self.per_pid.entry(pid).or_default() += n;
        }
        for (mine, theirs) in self.errors.iter_mut().zip(other.errors) {
            *mine += theirs;
        }
        self.latencies_us.extend(other.latencies_us);
    }
}

/// Runs the load and blocks until every client has stopped.
///
/// Bounded: no exchange starts after `duration`, and each one in flight at that moment finishes
/// within its connect and read timeouts.
pub fn run(config: &LoadConfig) -> Totals {
    let start = Instant::now();
    let deadline = start + config.duration;
    let issued = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);

    let mut totals = thread::scope(|scope| {
        let clients: Vec<_> = (0..config.concurrency.max(1))
            .map(|i| {
                let issued = &issued;
                let rng = Rng::new(seed ^ (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
                scope.spawn(move || client_loop(config, deadline, issued, rng))
            })
            .collect();
        let mut totals = Totals::default();
        for client in clients {
            totals.merge(client.join().expect("client thread panicked"));
        }
        totals
    });
    totals.elapsed = start.elapsed();
    totals
}

fn client_loop(config: &LoadConfig, deadline: Instant, issued: &AtomicU64, mut rng: Rng) -> Totals {
    let mut totals = Totals::default();
    let mut buf = Vec::with_capacity(64);
    loop {
        let began = Instant::now();
        if began >= deadline {
            break;
        }
        if let Some(max) = config.max_requests {
            if issued.fetch_add(1, Ordering::Relaxed) >= max {
                break;
            }
        }
        match exchange(&config.client, &mut rng, &mut buf) {
            Ok(pid) => {
                *totals.per_pid.entry(pid).or_default() += 1;
                let micros = began.elapsed().as_micros().min(u32::MAX as u128) as u32;
                totals.latencies_us.push(micros);
            }
            Err(failure) => {
                totals.errors[failure.index()] += 1;
                thread::sleep(ERROR_BACKOFF);
            }
        }
    }
    totals
}
