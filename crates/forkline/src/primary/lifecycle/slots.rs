//! The one owner of slot state: which worker is each slot's current one, which replacement is
//! on trial beside it, when an empty slot restarts and how often it has failed, and how many
//! slots the cluster wants. Pure decisions, with time passed in; `supervisor` and `replace`
//! apply them. Nothing else writes slot state.
//!
//! A slot's life: `assign` gives it a current worker; when that worker exits, `on_exit` decides
//! (restart after a backoff delay, release, give up). A replacement (reload, recycling) is a
//! *candidate* beside the current worker: `begin_replace`, then `commit` (the candidate becomes
//! current and the old worker is returned to be stopped) or `rollback` (the candidate is
//! forgotten, the old worker stays). A candidate's exit never books a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::control::{ExitReason, LastExit};
use crate::primary::options::{Backoff, RestartPolicy};

/// A worker process, by its unique id (`WorkerHandle::unique_id`).
pub(crate) type Seq = u64;

/// A worker that dies sooner than this after starting counts as dying young, whatever
/// `Backoff::min_uptime` says: with `min_uptime` 0 a program that cannot start would otherwise
/// be forked hundreds of times a second.
pub(crate) const MIN_UPTIME_FLOOR: Duration = Duration::from_secs(1);

/// The first restart delay after a young death is at least this, whatever `Backoff::initial`
/// says; it doubles from there.
pub(crate) const MIN_RESTART_DELAY: Duration = Duration::from_millis(50);

/// A restart booked for an empty slot. The ticket tells a stale timer from the live booking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingRestart {
    /// When it is due.
    pub at: Instant,
    /// Unique per booking.
    pub ticket: u64,
}

/// One slot's supervision state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot {
    /// The worker that serves the slot.
    pub current: Option<Seq>,
    /// A replacement on trial beside `current`.
    pub candidate: Option<Seq>,
    /// A restart booked while the slot is empty.
    pub restart: Option<PendingRestart>,
    /// Restarts so far.
    pub restarts: u64,
    /// Consecutive young deaths.
    pub failures: u32,
    /// True while the slot keeps dying young.
    pub crash_loop: bool,
    /// True once the slot reached `max_restarts`.
    pub gave_up: bool,
    /// How its last worker process ended.
    pub last_exit: Option<LastExit>,
}

impl Slot {
    /// True when the slot has a worker, a replacement on trial or a restart on the way.
    fn occupied(&self) -> bool {
        self.current.is_some() || self.candidate.is_some() || self.restart.is_some()
    }
}

/// Why a slot got a new worker in place of another: after an exit (the restart policy), or a
/// replacement that committed. The label of `forkline_restarts_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RestartReason {
    /// It exited with code 0 (restarted under `RestartPolicy::Always`).
    Exit,
    /// It exited with a non-zero code.
    Crash,
    /// A signal the primary did not send killed it.
    Signal,
    /// It was not ready within the ready timeout, and the primary killed it.
    ReadyTimeout,
    /// The primary killed it: it broke the protocol, or its watchdog fired.
    Killed,
    /// A rolling reload (or a control `restart`) replaced it.
    Reload,
    /// Recycling (`max_requests`, `max_memory`) replaced it.
    Recycle,
}

impl RestartReason {
    /// Every reason, in the order of `Slots::restarts_by_reason`.
    pub(crate) const ALL: [RestartReason; 7] = [
        RestartReason::Exit,
        RestartReason::Crash,
        RestartReason::Signal,
        RestartReason::ReadyTimeout,
        RestartReason::Killed,
        RestartReason::Reload,
        RestartReason::Recycle,
    ];

    /// Its index in `ALL`.
    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The label value: `exit`, `crash`, `signal`, `ready_timeout`, `killed`, `reload`,
    /// `recycle`.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // used by `/metrics`
    pub(crate) fn name(self) -> &'static str {
        match self {
            RestartReason::Exit => "exit",
            RestartReason::Crash => "crash",
            RestartReason::Signal => "signal",
            RestartReason::ReadyTimeout => "ready_timeout",
            RestartReason::Killed => "killed",
            RestartReason::Reload => "reload",
            RestartReason::Recycle => "recycle",
        }
    }
}

/// The facts of a worker's exit that decide what happens to its slot.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExitFacts {
    /// How long the process ran.
    pub uptime: Duration,
    /// A non-zero exit code or a signal.
    pub failed: bool,
    /// It was stopped on purpose (disconnect, kill, scale-down, replaced).
    pub planned: bool,
    /// What a restart after this exit is counted as.
    pub reason: RestartReason,
}

/// What an exit means for the worker's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnExit {
    /// The slot restarts after `delay` (zero: at once), with this ticket.
    Restart {
        slot: usize,
        delay: Duration,
        ticket: u64,
        failures: u32,
        crash_loop: bool,
    },
    /// The slot reached `max_restarts`: it stays empty.
    GaveUp { slot: usize, failures: u32 },
    /// The slot stays empty: stopped on purpose, the policy says no, or the cluster is stopping.
    Released { slot: usize },
    /// The worker was a replacement on trial: the replacement failed; nothing is booked.
    CandidateFailed { slot: usize },
    /// The worker no longer served its slot (replaced, or its slot was scaled away).
    Retired,
}

/// Why a replacement could not begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The cluster is stopping.
    Stopping,
    /// The slot has no live current worker (or not the one expected): nothing to replace.
    NothingToReplace,
    /// Another replacement of the slot is on trial.
    Busy,
}

/// The slots to start and the workers to stop after a change of the target.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Rescale {
    /// Empty slots to start.
    pub grow: Vec<usize>,
    /// Workers (current and candidates) of the slots that went away.
    pub shrink: Vec<Seq>,
}

/// Every slot's state, the target count, the restart policy, and whether the cluster stops.
#[derive(Debug)]
pub(crate) struct Slots {
    slots: BTreeMap<usize, Slot>,
    target: usize,
    restart: RestartPolicy,
    backoff: Backoff,
    stopping: bool,
    next_ticket: u64,
    /// Workers started in place of another, by `RestartReason` (its index in `ALL`), over the
    /// cluster's life: slots scaled away keep their share, so the totals never go down.
    restarts_by_reason: [u64; RestartReason::ALL.len()],
    /// Worker exits by `ExitReason` (its index in `ALL`), over the cluster's life.
    exits_by_reason: [u64; ExitReason::ALL.len()],
}

impl Slots {
    /// No slot in use yet; `target` slots wanted.
    pub(crate) fn new(target: usize, restart: RestartPolicy, backoff: Backoff) -> Self {
        Self {
            slots: BTreeMap::new(),
            target,
            restart,
            backoff,
            stopping: false,
            next_ticket: 0,
            restarts_by_reason: [0; RestartReason::ALL.len()],
            exits_by_reason: [0; ExitReason::ALL.len()],
        }
    }

    /// A worker of `slot` ended as `last` says: counted by reason, and kept as the slot's last
    /// exit.
    pub(crate) fn record_exit(&mut self, slot: usize, last: LastExit) {
        self.exits_by_reason[last.reason.index()] += 1;
        if let Some(entry) = self.slots.get_mut(&slot) {
            entry.last_exit = Some(last);
        }
    }

    /// Worker exits so far, by reason (the cluster's whole life).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // used by `/metrics`
    pub(crate) fn exits_by_reason(&self) -> impl Iterator<Item = (ExitReason, u64)> + '_ {
        ExitReason::ALL.into_iter().zip(self.exits_by_reason)
    }

    /// Workers started in place of another so far, by reason (the cluster's whole life).
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // used by `/metrics`
    pub(crate) fn restarts_by_reason(&self) -> impl Iterator<Item = (RestartReason, u64)> + '_ {
        RestartReason::ALL
            .iter()
            .zip(self.restarts_by_reason)
            .map(|(reason, n)| (*reason, n))
    }

    /// How many slots the cluster wants.
    pub(crate) fn target(&self) -> usize {
        self.target
    }

    /// True once the cluster began to stop.
    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping
    }

    /// The cluster stops: no restart is due any more, no replacement begins.
    pub(crate) fn begin_stop(&mut self) {
        self.stopping = true;
        for slot in self.slots.values_mut() {
            slot.restart = None;
        }
    }

    /// The current worker of `slot`.
    pub(crate) fn current(&self, slot: usize) -> Option<Seq> {
        self.slots.get(&slot).and_then(|s| s.current)
    }

    /// Every slot, by id.
    pub(crate) fn all(&self) -> impl Iterator<Item = (usize, &Slot)> {
        self.slots.iter().map(|(id, slot)| (*id, slot))
    }

    /// True when some slot waits for a restart.
    #[cfg(test)]
    pub(crate) fn restart_pending(&self) -> bool {
        self.slots.values().any(|s| s.restart.is_some())
    }

    /// Makes `seq` the current worker of `slot` (the first workers, scale-up). False when
    /// stopping or the slot is occupied.
    pub(crate) fn assign(&mut self, slot: usize, seq: Seq) -> bool {
        if self.stopping || self.slots.get(&slot).is_some_and(Slot::occupied) {
            return false;
        }
        let entry = self.slots.entry(slot).or_default();
        entry.current = Some(seq);
        entry.gave_up = false;
        true
    }

    /// Node's `fork()`: makes `seq` the current worker of the lowest free slot, and counts that
    /// slot in the target. `None` when stopping.
    pub(crate) fn claim(&mut self, seq: Seq) -> Option<usize> {
        if self.stopping {
            return None;
        }
        let slot = (0..)
            .find(|id| !self.slots.get(id).is_some_and(Slot::occupied))
            .expect("some slot id is free");
        self.assign(slot, seq);
        self.target = self.target.max(slot + 1);
        Some(slot)
    }

    /// The restart booked with `ticket` is due: `seq` becomes the slot's current worker. False
    /// when that booking is gone (cancelled, stopping, or the slot was taken otherwise).
    pub(crate) fn take_restart(&mut self, slot: usize, ticket: u64, seq: Seq) -> bool {
        let Some(entry) = self.slots.get_mut(&slot) else {
            return false;
        };
        if self.stopping || entry.restart.map(|r| r.ticket) != Some(ticket) {
            return false;
        }
        entry.restart = None;
        entry.current = Some(seq);
        true
    }

    /// Starts the trial of `seq` as the replacement of `slot`'s current worker `old`.
    pub(crate) fn begin_replace(&mut self, slot: usize, old: Seq, seq: Seq) -> Result<(), Refused> {
        if self.stopping {
            return Err(Refused::Stopping);
        }
        let entry = self.slots.get_mut(&slot).ok_or(Refused::NothingToReplace)?;
        if entry.current != Some(old) {
            return Err(Refused::NothingToReplace);
        }
        if entry.candidate.is_some() {
            return Err(Refused::Busy);
        }
        entry.candidate = Some(seq);
        Ok(())
    }

    /// The candidate `seq` passed its trial: it becomes current, counted as a restart for
    /// `reason` (reload, recycle). Returns `Ok(old)` with the worker to stop (if the slot still
    /// had one), or `Err(())` when the candidate is no longer on trial (its slot went away, or
    /// the cluster is stopping), so it must be stopped.
    #[allow(clippy::result_unit_err)]
    pub(crate) fn commit(
        &mut self,
        slot: usize,
        seq: Seq,
        reason: RestartReason,
    ) -> Result<Option<Seq>, ()> {
        let entry = self.slots.get_mut(&slot).ok_or(())?;
        if self.stopping || entry.candidate != Some(seq) {
            return Err(());
        }
        entry.candidate = None;
        // The old worker may have died during the trial and its restart be on the way.
        entry.restart = None;
        let old = entry.current.replace(seq);
        self.restarts_by_reason[reason.index()] += 1;
        Ok(old)
    }

    /// The candidate `seq` failed its trial: it is forgotten and the current worker stays.
    pub(crate) fn rollback(&mut self, slot: usize, seq: Seq) {
        if let Some(entry) = self.slots.get_mut(&slot) {
            if entry.candidate == Some(seq) {
                entry.candidate = None;
            }
        }
    }

    /// Worker `seq` of `slot` exited at `now`: decides what happens to the slot.
    pub(crate) fn on_exit(
        &mut self,
        slot: usize,
        seq: Seq,
        exit: ExitFacts,
        now: Instant,
    ) -> OnExit {
        let Some(entry) = self.slots.get_mut(&slot) else {
            return OnExit::Retired;
        };
        if entry.candidate == Some(seq) {
            entry.candidate = None;
            return OnExit::CandidateFailed { slot };
        }
        if entry.current != Some(seq) {
            return OnExit::Retired;
        }
        entry.current = None;
        let wanted = match self.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => exit.failed,
            RestartPolicy::Never => false,
        };
        if self.stopping || exit.planned || !wanted {
            return OnExit::Released { slot };
        }
        let backoff = self.backoff;
        if exit.uptime >= backoff.min_uptime.max(MIN_UPTIME_FLOOR) {
            entry.failures = 0;
            entry.crash_loop = false;
        } else {
            entry.failures += 1;
        }
        let failures = entry.failures;
        if backoff.max_restarts.is_some_and(|max| failures > max) {
            entry.gave_up = true;
            return OnExit::GaveUp { slot, failures };
        }
        let delay = backoff_delay(
            failures,
            backoff.initial.max(MIN_RESTART_DELAY),
            backoff.max,
        );
        entry.crash_loop = failures >= backoff.crash_loop_after;
        entry.restarts += 1;
        self.restarts_by_reason[exit.reason.index()] += 1;
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        entry.restart = Some(PendingRestart {
            at: now + delay,
            ticket,
        });
        OnExit::Restart {
            slot,
            delay,
            ticket,
            failures,
            crash_loop: entry.crash_loop,
        }
    }

    /// Sets the number of slots wanted: returns the empty slots to start (from the old target
    /// up) and the workers of the slots that go away (from the new target up), whose pending
    /// restarts are cancelled.
    pub(crate) fn set_target(&mut self, target: usize) -> Rescale {
        let mut rescale = Rescale::default();
        if self.stopping {
            return rescale;
        }
        let old = self.target;
        self.target = target;
        rescale.grow = (old..target)
            .filter(|id| !self.slots.get(id).is_some_and(Slot::occupied))
            .collect();
        let gone: Vec<usize> = self.slots.range(target..).map(|(id, _)| *id).collect();
        for id in gone {
            let slot = self.slots.remove(&id).expect("listed above");
            rescale.shrink.extend(slot.current);
            rescale.shrink.extend(slot.candidate);
        }
        rescale
    }
}

/// `initial * 2^(failures-1)`, capped at `max`; zero for a worker that was stable.
pub(crate) fn backoff_delay(failures: u32, initial: Duration, max: Duration) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
    initial.saturating_mul(factor).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn slots(policy: RestartPolicy) -> Slots {
        Slots::new(2, policy, Backoff::default())
    }

    fn crash(uptime: Duration) -> ExitFacts {
        ExitFacts {
            uptime,
            failed: true,
            planned: false,
            reason: RestartReason::Crash,
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let cap = Duration::from_secs(15);
        assert_eq!(backoff_delay(0, 100 * MS, cap), Duration::ZERO);
        assert_eq!(backoff_delay(1, 100 * MS, cap), 100 * MS);
        assert_eq!(backoff_delay(2, 100 * MS, cap), 200 * MS);
        assert_eq!(backoff_delay(4, 100 * MS, cap), 800 * MS);
        assert_eq!(backoff_delay(40, 100 * MS, cap), cap);
    }

    #[test]
    fn a_young_death_books_a_growing_delay_and_only_the_latest_ticket_restarts() {
        let mut s = slots(RestartPolicy::Always);
        let t0 = Instant::now();
        assert!(s.assign(0, 1));
        let first = s.on_exit(0, 1, crash(10 * MS), t0);
        let OnExit::Restart { delay, ticket, .. } = first else {
            panic!("{first:?}")
        };
        assert_eq!(delay, 100 * MS);
        // The slot is occupied by the booking: fork() takes another slot.
        assert_eq!(s.claim(7), Some(1));
        assert!(
            !s.take_restart(0, ticket + 1, 2),
            "a stale ticket starts nothing"
        );
        assert!(s.take_restart(0, ticket, 2));
        assert!(!s.take_restart(0, ticket, 3), "a ticket is used once");
        let second = s.on_exit(0, 2, crash(10 * MS), t0 + 200 * MS);
        assert!(matches!(second, OnExit::Restart { delay, failures: 2, .. } if delay == 200 * MS));
    }

    #[test]
    fn a_stable_worker_restarts_at_once_and_resets_failures() {
        let mut s = slots(RestartPolicy::Always);
        let now = Instant::now();
        s.assign(0, 1);
        let OnExit::Restart { ticket, .. } = s.on_exit(0, 1, crash(MS), now) else {
            panic!("a young death restarts")
        };
        assert_eq!(s.on_exit(0, 9, crash(MS), now), OnExit::Retired);
        assert!(s.take_restart(0, ticket, 2));
        let stable = s.on_exit(0, 2, crash(Duration::from_secs(10)), now);
        assert!(
            matches!(stable, OnExit::Restart { delay, failures: 0, crash_loop: false, .. } if delay.is_zero()),
            "{stable:?}"
        );
    }

    #[test]
    fn min_uptime_zero_still_backs_off() {
        let backoff = Backoff {
            min_uptime: Duration::ZERO,
            initial: Duration::ZERO,
            ..Backoff::default()
        };
        let mut s = Slots::new(1, RestartPolicy::Always, backoff);
        let now = Instant::now();
        s.assign(0, 1);
        let mut delays = Vec::new();
        for seq in 1..5 {
            match s.on_exit(0, seq, crash(5 * MS), now) {
                OnExit::Restart { delay, ticket, .. } => {
                    delays.push(delay);
                    assert!(s.take_restart(0, ticket, seq + 1));
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(delays, vec![50 * MS, 100 * MS, 200 * MS, 400 * MS]);
    }

    #[test]
    fn planned_exits_and_policies_release_the_slot() {
        let now = Instant::now();
        let mut s = slots(RestartPolicy::Always);
        s.assign(0, 1);
        let planned = ExitFacts {
            planned: true,
            ..crash(MS)
        };
        assert_eq!(s.on_exit(0, 1, planned, now), OnExit::Released { slot: 0 });
        assert_eq!(s.claim(2), Some(0), "a released slot is free for fork()");

        let mut s = slots(RestartPolicy::OnFailure);
        s.assign(0, 1);
        let clean = ExitFacts {
            failed: false,
            ..crash(MS)
        };
        assert_eq!(s.on_exit(0, 1, clean, now), OnExit::Released { slot: 0 });

        let mut s = slots(RestartPolicy::Never);
        s.assign(0, 1);
        assert_eq!(
            s.on_exit(0, 1, crash(MS), now),
            OnExit::Released { slot: 0 }
        );
    }

    #[test]
    fn crash_loop_then_give_up() {
        let backoff = Backoff {
            crash_loop_after: 2,
            max_restarts: Some(3),
            ..Backoff::default()
        };
        let mut s = Slots::new(1, RestartPolicy::Always, backoff);
        let now = Instant::now();
        s.assign(0, 1);
        let mut seen = Vec::new();
        for seq in 1..=4 {
            let decision = s.on_exit(0, seq, crash(MS), now);
            seen.push(decision);
            if let OnExit::Restart { ticket, .. } = decision {
                s.take_restart(0, ticket, seq + 1);
            }
        }
        assert!(matches!(
            seen[0],
            OnExit::Restart {
                crash_loop: false,
                ..
            }
        ));
        assert!(matches!(
            seen[1],
            OnExit::Restart {
                crash_loop: true,
                ..
            }
        ));
        assert_eq!(
            seen[3],
            OnExit::GaveUp {
                slot: 0,
                failures: 4
            }
        );
        assert!(s.all().next().unwrap().1.gave_up);
    }

    #[test]
    fn a_candidate_that_dies_books_nothing_and_the_old_worker_stays() {
        let mut s = slots(RestartPolicy::Always);
        let now = Instant::now();
        s.assign(0, 1);
        s.begin_replace(0, 1, 2).unwrap();
        assert_eq!(s.begin_replace(0, 1, 3), Err(Refused::Busy));
        assert_eq!(
            s.on_exit(0, 2, crash(MS), now),
            OnExit::CandidateFailed { slot: 0 }
        );
        assert_eq!(s.current(0), Some(1));
        assert!(!s.restart_pending());
        assert_eq!(
            s.commit(0, 2, RestartReason::Reload),
            Err(()),
            "a dead candidate never commits"
        );
    }

    #[test]
    fn commit_makes_the_candidate_current_and_retires_the_old_worker() {
        let mut s = slots(RestartPolicy::Always);
        let now = Instant::now();
        s.assign(0, 1);
        s.begin_replace(0, 1, 2).unwrap();
        assert_eq!(s.commit(0, 2, RestartReason::Reload), Ok(Some(1)));
        assert_eq!(s.current(0), Some(2));
        let planned = ExitFacts {
            planned: true,
            ..crash(MS)
        };
        assert_eq!(s.on_exit(0, 1, planned, now), OnExit::Retired);
    }

    #[test]
    fn rollback_keeps_the_old_worker() {
        let mut s = slots(RestartPolicy::Always);
        s.assign(0, 1);
        s.begin_replace(0, 1, 2).unwrap();
        s.rollback(0, 2);
        assert_eq!(s.current(0), Some(1));
        assert_eq!(s.commit(0, 2, RestartReason::Reload), Err(()));
        assert_eq!(s.begin_replace(0, 1, 3), Ok(()));
    }

    #[test]
    fn the_old_worker_dying_during_a_trial_restarts_and_commit_cancels_the_restart() {
        let mut s = slots(RestartPolicy::Always);
        let now = Instant::now();
        s.assign(0, 1);
        s.begin_replace(0, 1, 2).unwrap();
        assert!(matches!(
            s.on_exit(0, 1, crash(MS), now),
            OnExit::Restart { .. }
        ));
        assert_eq!(s.commit(0, 2, RestartReason::Reload), Ok(None));
        assert_eq!(s.current(0), Some(2));
        assert!(!s.restart_pending());
    }

    #[test]
    fn replacing_needs_the_expected_live_worker() {
        let mut s = slots(RestartPolicy::Always);
        assert_eq!(s.begin_replace(0, 1, 2), Err(Refused::NothingToReplace));
        s.assign(0, 1);
        assert_eq!(s.begin_replace(0, 5, 2), Err(Refused::NothingToReplace));
        s.begin_stop();
        assert_eq!(s.begin_replace(0, 1, 2), Err(Refused::Stopping));
    }

    #[test]
    fn stopping_cancels_restarts_and_refuses_new_workers() {
        let mut s = slots(RestartPolicy::Always);
        let now = Instant::now();
        s.assign(0, 1);
        let OnExit::Restart { ticket, .. } = s.on_exit(0, 1, crash(MS), now) else {
            panic!()
        };
        s.begin_stop();
        assert!(!s.take_restart(0, ticket, 2));
        assert_eq!(s.claim(3), None);
        assert!(!s.assign(1, 4));
        assert_eq!(s.on_exit(0, 1, crash(MS), now), OnExit::Retired);
    }

    #[test]
    fn scaling_grows_from_the_old_target_and_stops_the_slots_above_the_new_one() {
        let mut s = slots(RestartPolicy::Always);
        s.assign(0, 1);
        s.assign(1, 2);
        let up = s.set_target(4);
        assert_eq!(up.grow, vec![2, 3]);
        s.assign(2, 3);
        s.assign(3, 4);
        s.begin_replace(3, 4, 5).unwrap();
        let down = s.set_target(2);
        assert!(down.grow.is_empty());
        assert_eq!(down.shrink, vec![3, 4, 5]);
        assert_eq!(
            s.commit(3, 5, RestartReason::Reload),
            Err(()),
            "the trial of a removed slot ends"
        );
        let planned = ExitFacts {
            planned: true,
            ..crash(MS)
        };
        assert_eq!(s.on_exit(2, 3, planned, Instant::now()), OnExit::Retired);
        assert_eq!(s.target(), 2);
    }

    #[test]
    fn fork_takes_the_lowest_free_slot_and_raises_the_target() {
        let mut s = slots(RestartPolicy::Never);
        assert_eq!(s.claim(1), Some(0));
        assert_eq!(s.claim(2), Some(1));
        assert_eq!(s.claim(3), Some(2));
        assert_eq!(s.target(), 3);
        s.on_exit(0, 1, crash(MS), Instant::now());
        assert_eq!(s.claim(4), Some(0));
    }

    #[test]
    fn restarts_are_counted_by_reason_and_survive_scaling_down() {
        let mut s = slots(RestartPolicy::Always);
        let now = Instant::now();
        for (i, reason) in RestartReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
        let count = |s: &Slots, reason: RestartReason| {
            s.restarts_by_reason()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| n)
        };
        s.assign(0, 1);
        s.assign(1, 2);
        let signal = ExitFacts {
            reason: RestartReason::Signal,
            ..crash(MS)
        };
        let OnExit::Restart { ticket, .. } = s.on_exit(1, 2, signal, now) else {
            panic!("restarts")
        };
        assert!(s.take_restart(1, ticket, 3));
        // A failed candidate and a planned exit count nothing; a commit counts its purpose.
        s.begin_replace(0, 1, 4).unwrap();
        s.on_exit(0, 4, crash(MS), now);
        s.begin_replace(0, 1, 5).unwrap();
        assert_eq!(s.commit(0, 5, RestartReason::Recycle), Ok(Some(1)));
        let planned = ExitFacts {
            planned: true,
            ..crash(MS)
        };
        assert_eq!(s.on_exit(0, 1, planned, now), OnExit::Retired);
        s.set_target(1);
        assert_eq!(
            count(&s, RestartReason::Signal),
            1,
            "slot 1 is gone, its count stays"
        );
        assert_eq!(count(&s, RestartReason::Recycle), 1);
        assert_eq!(count(&s, RestartReason::Crash), 0);
        assert_eq!(s.restarts_by_reason().map(|(_, n)| n).sum::<u64>(), 2);
    }
}
