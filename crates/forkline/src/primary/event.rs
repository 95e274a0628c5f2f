//! The events a cluster reports, Node's `fork/online/listening/disconnect/exit/message` plus the
//! supervision events Node leaves to user code, and the stream that delivers them.

use std::time::Duration;

use tokio::sync::mpsc;

use crate::primary::handle::WorkerHandle;

/// Something that happened in the cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A worker process was started.
    Fork {
        /// The new worker.
        worker: WorkerHandle,
    },
    /// A worker completed the protocol handshake (or, for a program that does not speak the
    /// protocol, was started).
    Online {
        /// The worker.
        worker: WorkerHandle,
    },
    /// A worker is listening on `address` through the primary.
    Listening {
        /// The worker.
        worker: WorkerHandle,
        /// The bound address (`HOST:PORT` or a Unix path).
        address: String,
    },
    /// A worker became ready (see [`super::Readiness`]).
    Ready {
        /// The worker.
        worker: WorkerHandle,
    },
    /// A worker's IPC channel closed.
    Disconnect {
        /// The worker.
        worker: WorkerHandle,
    },
    /// A worker process exited.
    Exit {
        /// The worker.
        worker: WorkerHandle,
        /// Exit code, if it exited normally.
        code: Option<i32>,
        /// Terminating signal number, if it was killed by one.
        signal: Option<i32>,
        /// True when the worker was disconnected or killed on purpose.
        exited_after_disconnect: bool,
        /// Why it ended: what the primary stopped it for, or what it died of.
        reason: crate::control::ExitReason,
    },
    /// A worker sent a message.
    Message {
        /// The sender.
        worker: WorkerHandle,
        /// The message, as JSON.
        payload: serde_json::Value,
    },
    /// A worker slot will be restarted after `delay`.
    Restarting {
        /// The slot.
        slot: usize,
        /// The backoff delay before the restart.
        delay: Duration,
        /// Consecutive deaths soon after starting.
        failures: u32,
        /// True when the slot counts as crash-looping.
        crash_loop: bool,
    },
    /// A slot reached `max_restarts` and will not be restarted again.
    GaveUp {
        /// The slot.
        slot: usize,
        /// Consecutive deaths soon after starting.
        failures: u32,
    },
    /// A replacement (rolling reload or recycling) failed: the new worker was stopped, the old
    /// one stays current and serving.
    ReplaceFailed {
        /// The slot.
        slot: usize,
        /// Why the slot was being replaced.
        purpose: Replacement,
        /// What went wrong with the new worker.
        reason: ReplaceFailure,
    },
    /// A rolling reload began (`Cluster::reload`, SIGHUP).
    ReloadStarted,
    /// A rolling reload ended: every worker replaced (`ok`), or stopped at a failed slot (see
    /// the `ReplaceFailed` before it).
    ReloadFinished {
        /// True when every worker was replaced.
        ok: bool,
    },
    /// An upgrade began (`Cluster::upgrade`): a new primary was started.
    UpgradeStarted {
        /// The new primary's pid.
        pid: u32,
    },
    /// A new primary is ready and takes over (`Cluster::upgrade`): this one stops accepting
    /// and drains its workers.
    Upgraded {
        /// The new primary's pid.
        pid: u32,
    },
    /// An upgrade failed: the new primary was stopped, this one carries on.
    UpgradeFailed {
        /// What went wrong.
        reason: String,
    },
    /// A worker broke the protocol or timed out and was killed.
    WorkerError {
        /// The worker.
        worker: WorkerHandle,
        /// What it did.
        error: String,
    },
}

impl Event {
    /// Node's name for the event (`fork`, `online`, `listening`, `disconnect`, `exit`,
    /// `message`), or forkline's for the others.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Fork { .. } => "fork",
            Event::Online { .. } => "online",
            Event::Listening { .. } => "listening",
            Event::Ready { .. } => "ready",
            Event::Disconnect { .. } => "disconnect",
            Event::Exit { .. } => "exit",
            Event::Message { .. } => "message",
            Event::Restarting { .. } => "restarting",
            Event::GaveUp { .. } => "gave-up",
            Event::ReloadStarted => "reload-started",
            Event::ReloadFinished { .. } => "reload-finished",
            Event::UpgradeStarted { .. } => "upgrade-started",
            Event::Upgraded { .. } => "upgraded",
            Event::UpgradeFailed { .. } => "upgrade-failed",
            Event::ReplaceFailed { .. } => "replace-failed",
            Event::WorkerError { .. } => "worker-error",
        }
    }
}

/// Why a slot's worker is being replaced by a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replacement {
    /// A rolling reload ([`super::Cluster::reload`], SIGHUP).
    Reload,
    /// Recycling (`max_requests`, `max_memory`).
    Recycle,
}

impl Replacement {
    /// `reload` or `recycle`.
    pub fn name(self) -> &'static str {
        match self {
            Replacement::Reload => "reload",
            Replacement::Recycle => "recycle",
        }
    }
}

/// Why a replacement worker was not committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplaceFailure {
    /// It exited before it had been ready for the settle time.
    Exited {
        /// Exit code, if it exited normally.
        code: Option<i32>,
        /// Terminating signal number, if it was killed by one.
        signal: Option<i32>,
    },
    /// It did not become ready within the ready timeout.
    NotReady {
        /// The ready timeout.
        within: Duration,
    },
    /// The cluster began to stop, or the slot went away, before the replacement committed.
    Cancelled,
}

impl std::fmt::Display for ReplaceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplaceFailure::Exited {
                signal: Some(signal),
                ..
            } => write!(f, "was killed by signal {signal}"),
            ReplaceFailure::Exited { code, .. } => match code {
                Some(code) => write!(f, "exited with code {code}"),
                None => write!(f, "exited"),
            },
            ReplaceFailure::NotReady { within } => write!(f, "was not ready within {within:?}"),
            ReplaceFailure::Cancelled => write!(f, "was cancelled: the cluster is stopping"),
        }
    }
}

/// An async stream of events; ends when the cluster has stopped.
#[derive(Debug)]
pub struct EventStream {
    pub(crate) rx: mpsc::UnboundedReceiver<Event>,
}

impl EventStream {
    /// The next event, or `None` once the cluster has stopped.
    pub async fn next(&mut self) -> Option<Event> {
        self.rx.recv().await
    }
}

/// Fans events out to every subscriber.
#[derive(Debug, Default)]
pub(crate) struct EventBus {
    subscribers: std::sync::Mutex<Vec<mpsc::UnboundedSender<Event>>>,
}

impl EventBus {
    /// A new subscriber that sees every event from now on.
    pub(super) fn subscribe(&self) -> EventStream {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers.lock().unwrap().push(tx);
        EventStream { rx }
    }

    /// Delivers `event` to every live subscriber.
    pub(super) fn emit(&self, event: Event) {
        tracing::debug!(event = event.name(), "cluster event");
        let mut subs = self.subscribers.lock().unwrap();
        subs.retain(|tx| tx.send(event.clone()).is_ok());
    }

    /// Ends every stream.
    pub(super) fn close(&self) {
        self.subscribers.lock().unwrap().clear();
    }
}
