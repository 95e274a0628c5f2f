//! What the cluster reports about itself: how it ended (`Shutdown`), and each slot's
//! supervision state as the core reads it (`SlotView`, the base of the control protocol's
//! `SlotStatus`).

use std::time::Instant;

use crate::primary::handle::WorkerState;

/// How the cluster ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Shutdown {
    /// True when every worker stopped within the graceful timeout.
    pub clean: bool,
    /// Slot ids of workers that had to be SIGKILLed.
    pub killed: Vec<usize>,
}

impl Shutdown {
    /// 0 when clean, 1 otherwise: what a primary process should exit with.
    pub fn exit_code(&self) -> i32 {
        if self.clean {
            0
        } else {
            1
        }
    }
}

/// One slot's supervision state, read under the core's lock.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotView {
    /// The slot.
    pub slot: usize,
    /// Pid of the slot's current worker, if one is running.
    pub pid: Option<u32>,
    /// State of the slot's current worker.
    pub state: Option<WorkerState>,
    /// Pid of a replacement on trial beside the current worker (reload, recycling).
    pub replacement_pid: Option<u32>,
    /// Restarts so far.
    pub restarts: u64,
    /// Consecutive deaths soon after starting.
    pub failures: u32,
    /// True while the slot keeps dying young (`failures >= crash_loop_after`).
    pub crash_loop: bool,
    /// True when the slot reached `max_restarts` and is no longer restarted.
    pub gave_up: bool,
    /// How its last worker process ended.
    pub last_exit: Option<crate::control::LastExit>,
    /// When the next restart is due, if one is scheduled.
    pub restart_at: Option<Instant>,
    /// Connections handed to the current worker (round-robin/proxy).
    pub connections: u64,
}

impl SlotView {
    /// The control protocol's status of this slot, from what the core knows (memory, CPU and
    /// the traffic figures are for `stats` to add).
    pub(crate) fn status(&self) -> crate::control::SlotStatus {
        crate::control::SlotStatus {
            slot: self.slot,
            pid: self.pid,
            state: self.state,
            restarts: self.restarts,
            failures: Some(self.failures),
            connections: self.connections,
            replacement_pid: self.replacement_pid,
            crash_loop: self.crash_loop,
            gave_up: self.gave_up,
            last_exit: self.last_exit,
            ..Default::default()
        }
    }
}
