//! Accept coalescing for round-robin mode: while connections keep arriving, the primary's
//! accept loop wakes up on a short one-shot timer and takes everything queued since, instead of
//! waking up once per connection.
//!
//! A wake-up costs the primary a context switch (and, across CPUs, an inter-processor
//! interrupt) and costs each worker another one for the packet it is handed. Under load, with
//! connections a few tens of microseconds apart, those wake-ups are most of the primary's work;
//! batching them is what interrupt moderation does for a network card. The loop is *hot* (waits
//! on the timer) only while each wake-up finds a queue of two connections or more; otherwise it
//! waits on the socket as usual, so a connection after a quiet spell, or from a client that
//! connects again only after each answer, is handed out at once, and no connection waits longer
//! than the window. Waiting connections stay in the kernel's accept queue; nothing is held in
//! the primary. Whether coalescing is used at all is up to the [`Governor`], which measures.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use tokio::io::unix::AsyncFd;

/// Whether a listener's accept loop coalesces now: its governor's decision (or always), shown
/// in `on` for monitoring. A listener's accept threads share one, so that its governor measures
/// their accept rate together (one thread's own rate depends on what the others take).
pub(crate) struct CoalesceGate {
    window: Duration,
    /// What decides whether coalescing is used; `None` to coalesce whenever connections queue.
    governor: Option<Mutex<Governor>>,
    /// Whether coalescing is on now (the governor allows it, or its probe with coalescing;
    /// always true with `always`).
    on: Arc<AtomicBool>,
}

impl CoalesceGate {
    /// Coalescing with `window`, decided by a governor unless `always`.
    pub(crate) fn new(window: Duration, always: bool) -> Self {
        Self {
            window,
            governor: (!always).then(|| Mutex::new(Governor::new(window, Instant::now()))),
            on: Arc::new(AtomicBool::new(always)),
        }
    }

    /// The coalescing window.
    pub(crate) fn window(&self) -> Duration {
        self.window
    }

    /// The flag that shows whether coalescing is on.
    pub(crate) fn on(&self) -> Arc<AtomicBool> {
        self.on.clone()
    }

    /// Records a wake-up of an accept loop that took `accepted` connections; true when its next
    /// wait should be one window (it is *hot*): while each wake-up finds a queue, two
    /// connections or more (they arrive faster than the primary wakes up), and cold again after
    /// one with one or none (so a client that connects again only after each answer never
    /// waits), or when the governor finds that coalescing does not pay.
    pub(crate) fn record(&self, accepted: usize) -> bool {
        let allowed = self.governor.as_ref().is_none_or(|governor| {
            let mut governor = governor.lock().unwrap();
            governor.record(accepted, Instant::now());
            governor.allowed()
        });
        if self.on.load(Ordering::Relaxed) != allowed {
            self.on.store(allowed, Ordering::Relaxed);
        }
        allowed && accepted >= 2
    }
}

/// Accept coalescing for the accept task: whether its next wait is for the timer rather than
/// the socket, and the timer.
pub(crate) struct Coalescer {
    timer: CoalesceTimer,
    gate: CoalesceGate,
    hot: bool,
}

impl Coalescer {
    /// Coalescing as `gate` decides, on a timer of its window.
    pub(crate) fn new(gate: CoalesceGate) -> io::Result<Self> {
        Ok(Self {
            timer: CoalesceTimer::new(gate.window())?,
            gate,
            hot: false,
        })
    }

    /// Whether the accept loop's next wait is for the timer.
    pub(crate) fn hot(&self) -> bool {
        self.hot
    }

    /// Waits one window.
    pub(crate) async fn wait(&self) -> io::Result<()> {
        self.timer.wait().await
    }

    /// Records a wake-up of the accept loop that took `accepted` connections (see
    /// [`CoalesceGate::record`]).
    pub(crate) fn record(&mut self, accepted: usize) {
        self.hot = self.gate.record(accepted);
    }
}

/// A one-shot, high-resolution timer (a `timerfd`; tokio's own timers tick in milliseconds).
struct CoalesceTimer {
    timer: TimerFd,
    /// A second descriptor of the same timer, registered with the runtime.
    ready: AsyncFd<OwnedFd>,
    window: Duration,
}

impl CoalesceTimer {
    /// A timer that fires `window` after each [`wait`](Self::wait) starts.
    pub(crate) fn new(window: Duration) -> io::Result<Self> {
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
    pub(crate) async fn wait(&self) -> io::Result<()> {
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

/// A pause between wake-ups longer than this (or than two windows) voids the probe under way:
/// a rate taken across idle time says nothing about how fast connections can be accepted.
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
/// pace, not the primary) coalescing stays off, so it never adds latency for nothing. A probe
/// only counts under steady load: a pause longer than `IDLE_GAP` restarts it, so under light
/// traffic coalescing is never even tried, and the first probe comes as soon as load does.
#[derive(Debug)]
pub(crate) struct Governor {
    phase: Phase,
    phase_start: Instant,
    last_wake: Instant,
    /// Connections accepted in this phase.
    accepted: u64,
    /// The longest pause a probe survives.
    idle_gap: Duration,
    /// The rate measured by the probe without coalescing.
    rate_without: f64,
    /// The decision of the last pair of probes.
    coalesce: bool,
}

impl Governor {
    /// A governor for a coalescing `window`, starting by probing without coalescing.
    pub(crate) fn new(window: Duration, now: Instant) -> Self {
        Self {
            phase: Phase::ProbeWithout,
            phase_start: now,
            last_wake: now,
            accepted: 0,
            idle_gap: IDLE_GAP.max(2 * window),
            rate_without: 0.0,
            coalesce: false,
        }
    }

    /// Whether the accept loop may coalesce now.
    pub(crate) fn allowed(&self) -> bool {
        match self.phase {
            Phase::ProbeWithout => false,
            Phase::ProbeWith => true,
            Phase::Hold => self.coalesce,
        }
    }

    /// Records a wake-up of the accept loop at `now` that accepted `accepted` connections.
    pub(crate) fn record(&mut self, accepted: usize, now: Instant) {
        let pause = now.saturating_duration_since(self.last_wake);
        self.last_wake = now;
        if self.phase != Phase::Hold && pause > self.idle_gap {
            // Not steady load: start over, without coalescing, from this wake-up.
            self.next(Phase::ProbeWithout, now);
            return;
        }
        self.accepted += accepted as u64;
        let elapsed = now.saturating_duration_since(self.phase_start);
        let rate = (self.accepted >= MIN_CONNECTIONS)
            .then(|| self.accepted as f64 / elapsed.as_secs_f64().max(1e-9));
        match (self.phase, rate) {
            (Phase::ProbeWithout, Some(rate)) if elapsed >= PROBE => {
                self.rate_without = rate;
                self.next(Phase::ProbeWith, now);
            }
            (Phase::ProbeWith, Some(with)) if elapsed >= PROBE => {
                self.coalesce = with > self.rate_without * GAIN;
                tracing::debug!(
                    without = self.rate_without as u64,
                    with = with as u64,
                    coalesce = self.coalesce,
                    "accept coalescing probed (connections per second)"
                );
                self.next(Phase::Hold, now);
            }
            // Steady, but too few connections to tell: probe again without.
            (Phase::ProbeWithout | Phase::ProbeWith, None) if elapsed >= PROBE => {
                self.next(Phase::ProbeWithout, now)
            }
            (Phase::Hold, _) if elapsed >= HOLD => self.next(Phase::ProbeWithout, now),
            _ => {}
        }
    }

    fn next(&mut self, phase: Phase, now: Instant) {
        self.phase = phase;
        self.phase_start = now;
        self.accepted = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_micros(500);

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
        let mut governor = Governor::new(WINDOW, now);
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
            let mut governor = Governor::new(WINDOW, now);
            run(&mut governor, &mut now, PROBE, 10);
            run(&mut governor, &mut now, PROBE, with);
            assert!(!governor.allowed(), "{with} per wake-up with, 10 without");
            run(&mut governor, &mut now, HOLD / 2, with);
            assert!(!governor.allowed());
        }
    }

    #[test]
    fn a_pause_voids_the_probe_under_way() {
        let mut now = Instant::now();
        let mut governor = Governor::new(WINDOW, now);
        run(
            &mut governor,
            &mut now,
            PROBE + Duration::from_millis(1),
            10,
        );
        assert!(governor.allowed(), "probing with");
        // The clients pause for a second: had it counted, the probe with coalescing would
        // look six times slower. It starts over instead, without coalescing.
        now += Duration::from_secs(1);
        governor.record(1, now);
        assert!(!governor.allowed(), "back to probing without");
        run(
            &mut governor,
            &mut now,
            PROBE + Duration::from_millis(1),
            10,
        );
        run(&mut governor, &mut now, PROBE, 13);
        assert!(governor.allowed(), "decided on steady load only");
    }

    #[test]
    fn a_long_window_is_not_a_pause() {
        let window = Duration::from_millis(20);
        let mut now = Instant::now();
        let mut governor = Governor::new(window, now);
        run(
            &mut governor,
            &mut now,
            PROBE + Duration::from_millis(1),
            10,
        );
        assert!(governor.allowed());
        // With coalescing, wake-ups come a window apart, and take more each.
        for _ in 0..11 {
            now += window;
            governor.record(260, now);
        }
        assert!(governor.allowed(), "kept: 13 per millisecond against 10");
    }

    #[test]
    fn load_after_light_traffic_is_probed_at_once() {
        let mut now = Instant::now();
        let mut governor = Governor::new(WINDOW, now);
        // Ten seconds of one connection every 10 ms: never even probed with coalescing.
        for _ in 0..1000 {
            now += Duration::from_millis(10);
            governor.record(1, now);
            assert!(!governor.allowed());
        }
        // Then load: decided within two probes, not after a hold.
        run(
            &mut governor,
            &mut now,
            PROBE + Duration::from_millis(10),
            10,
        );
        run(&mut governor, &mut now, PROBE, 13);
        assert!(governor.allowed());
    }

    #[test]
    fn light_traffic_never_turns_coalescing_on() {
        let mut now = Instant::now();
        let mut governor = Governor::new(WINDOW, now);
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
