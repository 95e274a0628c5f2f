//! Why a worker process ended ([`ExitReason`]), and a slot's last exit ([`LastExit`]): one
//! reason for every exit, in `forkline status --json`, `forkline_worker_exits_total{reason}`,
//! [`Event::Exit`](crate::Event::Exit) and the log line.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a worker process ended: what the primary stopped it for, or else what it died of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ExitReason {
    /// `exit`: it exited on its own with code 0.
    Exit,
    /// `crash`: it exited on its own with a non-zero code (or could not be started).
    Crash,
    /// `signal`: a signal the primary did not send ended it.
    Signal,
    /// `oom`: the kernel's OOM killer ended it (a SIGKILL the primary did not send, while the
    /// kernel counted an OOM kill).
    Oom,
    /// `watchdog`: it stopped sending `WATCHDOG=1`; the primary killed it.
    Watchdog,
    /// `protocol`: it broke its channel's protocol; the primary killed it.
    Protocol,
    /// `ready-timeout`: it was not ready within the ready timeout; the primary killed it.
    ReadyTimeout,
    /// `recycle-requests`: recycled after `max_requests` connections.
    RecycleRequests,
    /// `recycle-memory`: recycled over `max_memory`.
    RecycleMemory,
    /// `reload`: a rolling reload (or a control `restart`) replaced it.
    Reload,
    /// `scale`: its slot went away (scaled down).
    Scale,
    /// `stop`: the cluster stopped, or it was stopped on purpose (`WorkerHandle::disconnect`,
    /// `kill`).
    Stop,
}

impl ExitReason {
    /// Every reason, in declaration order.
    pub const ALL: [ExitReason; 12] = [
        ExitReason::Exit,
        ExitReason::Crash,
        ExitReason::Signal,
        ExitReason::Oom,
        ExitReason::Watchdog,
        ExitReason::Protocol,
        ExitReason::ReadyTimeout,
        ExitReason::RecycleRequests,
        ExitReason::RecycleMemory,
        ExitReason::Reload,
        ExitReason::Scale,
        ExitReason::Stop,
    ];

    /// Its name: `exit`, `crash`, `signal`, `oom`, `watchdog`, `protocol`, `ready-timeout`,
    /// `recycle-requests`, `recycle-memory`, `reload`, `scale`, `stop`.
    pub fn name(self) -> &'static str {
        match self {
            ExitReason::Exit => "exit",
            ExitReason::Crash => "crash",
            ExitReason::Signal => "signal",
            ExitReason::Oom => "oom",
            ExitReason::Watchdog => "watchdog",
            ExitReason::Protocol => "protocol",
            ExitReason::ReadyTimeout => "ready-timeout",
            ExitReason::RecycleRequests => "recycle-requests",
            ExitReason::RecycleMemory => "recycle-memory",
            ExitReason::Reload => "reload",
            ExitReason::Scale => "scale",
            ExitReason::Stop => "stop",
        }
    }

    /// The reason named `name` (as [`name`](ExitReason::name) gives it).
    pub fn parse(name: &str) -> Option<ExitReason> {
        ExitReason::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Its index in [`ALL`](ExitReason::ALL).
    pub fn index(self) -> usize {
        ExitReason::ALL.iter().position(|r| *r == self).unwrap_or(0)
    }

    /// The reason of an exit: what the primary stopped the worker for (`stopped_for`), else,
    /// for a planned exit (it was disconnected on purpose), `Stop`; else what it died of — a
    /// signal (`Oom` for a SIGKILL while the kernel counted an OOM kill), code 0, or a crash.
    pub fn of_exit(
        stopped_for: Option<ExitReason>,
        planned: bool,
        code: Option<i32>,
        signal: Option<i32>,
        oom_killed: bool,
    ) -> ExitReason {
        match (stopped_for, signal, code) {
            (Some(reason), _, _) => reason,
            _ if planned => ExitReason::Stop,
            (None, Some(9), _) if oom_killed => ExitReason::Oom,
            (None, Some(_), _) => ExitReason::Signal,
            (None, None, Some(0)) => ExitReason::Exit,
            (None, None, _) => ExitReason::Crash,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a slot's last worker process ended ([`SlotStatus::last_exit`](crate::SlotStatus)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LastExit {
    /// Why.
    pub reason: ExitReason,
    /// Its pid.
    pub pid: u32,
    /// Its exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
}

impl LastExit {
    /// A last exit.
    pub fn new(reason: ExitReason, pid: u32, code: Option<i32>, signal: Option<i32>) -> Self {
        Self {
            reason,
            pid,
            code,
            signal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primarys_reason_comes_first_then_what_it_died_of() {
        use ExitReason as R;
        assert_eq!(
            R::of_exit(Some(R::Reload), true, Some(0), None, false),
            R::Reload
        );
        assert_eq!(
            R::of_exit(Some(R::Watchdog), false, None, Some(9), true),
            R::Watchdog
        );
        assert_eq!(R::of_exit(None, true, None, Some(15), false), R::Stop);
        assert_eq!(R::of_exit(None, false, None, Some(9), true), R::Oom);
        assert_eq!(R::of_exit(None, false, None, Some(9), false), R::Signal);
        assert_eq!(R::of_exit(None, false, None, Some(15), true), R::Signal);
        assert_eq!(R::of_exit(None, false, Some(0), None, false), R::Exit);
        assert_eq!(R::of_exit(None, false, Some(3), None, false), R::Crash);
        assert_eq!(R::of_exit(None, false, None, None, false), R::Crash);
        for reason in R::ALL {
            assert_eq!(R::parse(reason.name()), Some(reason));
            assert_eq!(
                serde_json::to_string(&reason).unwrap(),
                format!("\"{}\"", reason.name())
            );
            assert_eq!(R::ALL[reason.index()], reason);
        }
    }
}
