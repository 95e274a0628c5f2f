//! Accept coalescing for round-robin mode: while connections keep arriving, the primary's
//! accept loop wakes up on a short one-shot timer and takes everything queued since, instead of
//! waking up once per connection.
//!
//! A wake-up costs the primary a context switch (and, across CPUs, an inter-processor
//! interrupt) and costs each worker another one for the packet it is handed. Under load, with
//! connections a few tens of microseconds apart, those wake-ups are most of the primary's work;
//! batching them is what interrupt moderation does for a network card. While the loop is *cold*
//! (the last timer found nothing) it waits on the socket as usual, so a connection arriving
//! after a quiet spell is handed out at once: only connections that arrive while others are
//! still streaming in wait, and never longer than the window. Waiting connections stay in the
//! kernel's accept queue; nothing is held in the primary.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// A one-shot, high-resolution timer (a `timerfd`; tokio's own timers tick in milliseconds).
pub(crate) struct CoalesceTimer {
    timer: TimerFd,
    /// A second descriptor of the same timer, registered with the runtime.
    ready: AsyncFd<OwnedFd>,
    window: Duration,
}

impl CoalesceTimer {
    /// A timer that fires `window` after each [`wait`](Self::wait) starts.
    pub fn new(window: Duration) -> io::Result<Self> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        let registered = timer.as_fd().try_clone_to_owned()?;
        let ready = crate::sys::async_fd(registered, tokio::io::Interest::READABLE)?;
        Ok(Self {
            timer,
            ready,
            window,
        })
    }

    /// Waits one window.
    pub async fn wait(&self) -> io::Result<()> {
        self.timer.set(
            Expiration::OneShot(TimeSpec::from_duration(self.window)),
            TimerSetTimeFlags::empty(),
        )?;
        loop {
            let mut guard = self.ready.readable().await?;
            // Reading the expiration count empties the timer; EAGAIN means a stale wake-up.
            let read = nix::unistd::read(self.ready.get_ref(), &mut [0u8; 8]);
            guard.clear_ready();
            match read {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// How long each probe lasts: one stretch accepting without coalescing, then one with.
const PROBE: Duration = Duration::from_millis(200);

/// How long a decision holds before the next pair of probes.
const HOLD: Duration = Duration::from_secs(3);

/// How much faster connections must be accepted with coalescing for it to be kept.
const GAIN: f64 = 1.05;

/// A probe with fewer connections than this decides nothing (coalescing stays off).
const MIN_CONNECTIONS: u64 = 100;

/// The most one gap between wake-ups counts towards a probe's busy time: longer gaps are idle
/// time, and idle time says nothing about how fast connections can be accepted.
const IDLE_GAP: Duration = Duration::from_millis(5);

/// Where the governor is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Measuring the accept rate without coalescing.
    ProbeWithout,
    /// Measuring the accept rate with coalescing.
    ProbeWith,
    /// Keeping the decision taken from the two probes.
    Hold,
}

/// Decides, by measuring, whether coalescing is used at all.
///
/// Coalescing helps when wake-ups are what limits the accept rate (many clients, CPUs busy) and
/// hurts when latency is (a few clients that each wait for their answer: they stall while a
/// window runs). So the governor measures how fast connections are accepted during a short
/// probe without coalescing and one with, and keeps coalescing for the next few seconds only if
/// it was clearly faster; then it probes again. When the rates are equal (the clients set the
/// pace, not the primary) or traffic is light, coalescing stays off, so it never adds latency
/// for nothing. Rates are taken over busy time: a gap between wake-ups counts at most
/// `IDLE_GAP`, so a pause in the traffic during a probe does not tip the comparison.
#[derive(Debug)]
pub(crate) struct Governor {
    phase: Phase,
    phase_start: Instant,
    last_wake: Instant,
    /// Connections accepted, and busy time, in this phase.
    accepted: u64,
    busy: Duration,
    /// The rate measured by the probe without coalescing (`None`: too little traffic).
    rate_without: Option<f64>,
    /// The decision of the last pair of probes.
    coalesce: bool,
}

impl Governor {
    /// A governor that starts by probing without coalescing.
    pub fn new(now: Instant) -> Self {
        Self {
            phase: Phase::ProbeWithout,
            phase_start: now,
            last_wake: now,
            accepted: 0,
            busy: Duration::ZERO,
            rate_without: None,
            coalesce: false,
        }
    }

    /// Whether the accept loop may coalesce now.
    pub fn allowed(&self) -> bool {
        match self.phase {
            Phase::ProbeWithout => false,
            Phase::ProbeWith => true,
            Phase::Hold => self.coalesce,
        }
    }

    /// Records a wake-up of the accept loop at `now` that accepted `accepted` connections.
    pub fn record(&mut self, accepted: usize, now: Instant) {
        self.accepted += accepted as u64;
        self.busy += now.saturating_duration_since(self.last_wake).min(IDLE_GAP);
        self.last_wake = now;
        let elapsed = now.saturating_duration_since(self.phase_start);
        match self.phase {
            Phase::ProbeWithout if elapsed >= PROBE => {
                self.rate_without = self.rate();
                self.next(Phase::ProbeWith, now);
            }
            Phase::ProbeWith if elapsed >= PROBE => {
                self.coalesce = match (self.rate_without, self.rate()) {
                    (Some(without), Some(with)) => with > without * GAIN,
                    _ => false,
                };
                tracing::debug!(
                    without = self.rate_without.map(|r| r as u64),
                    with = self.rate().map(|r| r as u64),
                    coalesce = self.coalesce,
                    "accept coalescing probed (connections per busy second)"
                );
                self.next(Phase::Hold, now);
            }
            Phase::Hold if elapsed >= HOLD => self.next(Phase::ProbeWithout, now),
            _ => {}
        }
    }

    /// Connections per busy second in this phase, if there were enough to tell.
    fn rate(&self) -> Option<f64> {
        (self.accepted >= MIN_CONNECTIONS && !self.busy.is_zero())
            .then(|| self.accepted as f64 / self.busy.as_secs_f64())
    }

    fn next(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.phase_start = now;
        self.accepted = 0;
        self.busy = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `governor` wake-ups every millisecond from `*now` for `span`, accepting
    /// `per_wake` each, and advances `*now`.
    fn run(governor: &mut Governor, now: &mut Instant, span: Duration, per_wake: usize) {
        let end = *now + span;
        while *now < end {
            *now += Duration::from_millis(1);
            governor.record(per_wake, *now);
        }
    }

    #[test]
    fn keeps_coalescing_only_when_it_accepts_clearly_faster() {
        let mut now = Instant::now();
        let mut governor = Governor::new(now);
        assert!(!governor.allowed(), "starts without");
        run(&mut governor, &mut now, PROBE, 10);
        assert!(governor.allowed(), "then probes with");
        run(&mut governor, &mut now, PROBE, 13);
        assert!(governor.allowed(), "30 % faster: kept");
        run(&mut governor, &mut now, HOLD - Duration::from_millis(5), 13);
        assert!(governor.allowed(), "for the whole hold");
        run(&mut governor, &mut now, Duration::from_millis(10), 13);
        assert!(!governor.allowed(), "then probes again, starting without");
    }

    #[test]
    fn turns_coalescing_off_when_it_is_slower_or_no_faster() {
        for with in [5, 10] {
            let mut now = Instant::now();
            let mut governor = Governor::new(now);
            run(&mut governor, &mut now, PROBE, 10);
            run(&mut governor, &mut now, PROBE, with);
            assert!(!governor.allowed(), "{with} per wake-up with, 10 without");
            run(&mut governor, &mut now, HOLD / 2, with);
            assert!(!governor.allowed());
        }
    }

    #[test]
    fn a_pause_in_the_traffic_does_not_make_coalescing_look_faster() {
        let mut now = Instant::now();
        let mut governor = Governor::new(now);
        // Without: 100 ms of traffic, a second of nothing, 100 ms of traffic, at the same
        // pace as with. Over wall-clock time the probe without would look six times slower.
        run(&mut governor, &mut now, PROBE / 2, 10);
        now += Duration::from_secs(1);
        run(&mut governor, &mut now, PROBE / 2, 10);
        assert!(governor.allowed(), "probing with");
        run(&mut governor, &mut now, PROBE, 10);
        assert!(!governor.allowed(), "same pace: off");
    }

    #[test]
    fn light_traffic_never_turns_coalescing_on() {
        let mut now = Instant::now();
        let mut governor = Governor::new(now);
        // One connection every 10 ms: 20 per probe, too few to decide on.
        for _ in 0..2 {
            for _ in 0..20 {
                now += Duration::from_millis(10);
                governor.record(1, now);
            }
        }
        assert!(!governor.allowed());
    }
}
