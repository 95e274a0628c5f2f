//! `WorkerHandle`: the primary's view of one worker process (Node's `Worker` object).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::primary::lifecycle::notice::WorkerNotice;
use crate::primary::lifecycle::slots::RestartReason;
use crate::primary::procfs::CpuWindow;
use crate::protocol::channel::encode;
use crate::protocol::ToWorker;
use crate::sys;

/// Where a worker is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum WorkerState {
    /// Process started, handshake not done yet.
    Starting,
    /// Handshake done (or a plain program that was started).
    Online,
    /// Ready to serve (see `Readiness`).
    Ready,
    /// Asked to stop; finishing its work.
    Draining,
    /// The process has exited.
    Exited,
}

impl WorkerState {
    /// The name `Serialize` writes (`"ready"`).
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Online => "online",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Exited => "exited",
        }
    }

    fn from_u8(v: u8) -> Self {
        match v {
            0 => WorkerState::Starting,
            1 => WorkerState::Online,
            2 => WorkerState::Ready,
            3 => WorkerState::Draining,
            _ => WorkerState::Exited,
        }
    }
}

impl fmt::Display for WorkerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A packet queued for a worker: encoded bytes, sent in order by the worker's writer task.
pub(crate) type Outgoing = Vec<u8>;

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ExitInfo {
    /// Exit code, if it exited normally.
    pub code: Option<i32>,
    /// Terminating signal, if a signal killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// A non-zero code or a signal.
    pub(crate) fn failed(&self) -> bool {
        self.code != Some(0) || self.signal.is_some()
    }
}

/// Where a signal goes: the worker process, or its whole process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Process,
    Group,
}

pub(crate) struct WorkerShared {
    pub id: usize,
    pub seq: u64,
    pub started: Instant,
    pub pid: AtomicU32,
    /// Signals asked for before the process existed, delivered as soon as it does. The lock
    /// also orders `set_pid` against `signal`, so none is lost in between.
    pending_signals: Mutex<Vec<(Signal, Reach)>>,
    pub state: AtomicU8,
    /// Node's `isConnected()`: true from `fork()` until the channel closes.
    pub connected: AtomicBool,
    pub exited_after_disconnect: AtomicBool,
    /// A graceful stop was asked for (sent once).
    stop_asked: AtomicBool,
    /// A replacement on trial: it gets no connections from the primary until it commits.
    on_trial: AtomicBool,
    pub speaks_protocol: AtomicBool,
    /// The primary expects this worker to speak the protocol (a library worker), so a stop
    /// asked before its handshake is a queued `disconnect`, not a signal.
    pub expect_protocol: bool,
    pub accepted: AtomicU64,
    /// Connections after which the worker is recycled (`u64::MAX`: never).
    pub request_limit: AtomicU64,
    /// Set once the recycler has picked this worker for replacement.
    pub recycling: AtomicBool,
    /// Woken when `accepted` reaches `request_limit`.
    pub limit_reached: OnceLock<Arc<tokio::sync::Notify>>,
    /// Packets for the worker, queued from `fork()` on.
    outbox: mpsc::UnboundedSender<Outgoing>,
    /// The queue's other end, taken by the writer task once `welcome` is sent, so nothing
    /// overtakes the handshake.
    inbox: Mutex<Option<mpsc::UnboundedReceiver<Outgoing>>>,
    /// What the primary learnt about it from the side, for its supervision loop.
    notices: mpsc::UnboundedSender<WorkerNotice>,
    /// The other end, taken by the supervision loop.
    notice_queue: Mutex<Option<mpsc::UnboundedReceiver<WorkerNotice>>>,
    /// How the process ended, once it has (Node's `isDead()` is its being set).
    pub exit: OnceLock<ExitInfo>,
    /// The primary's copy of the worker's end of the IPC socket: the handoffs it has not read
    /// are still queued there, and can be taken back (see `dispatch`).
    pub worker_end: OnceLock<Arc<std::os::fd::OwnedFd>>,
    /// Connections handed to it (counted in `accepted`) and then taken back for other
    /// workers: it died or stopped reading before it took them, or gave them back.
    pub taken_back: AtomicU64,
    /// Why the primary killed it, if it did: what a restart after its exit is counted as.
    pub kill_reason: OnceLock<RestartReason>,
    /// What the primary stopped or killed it for, once it decided to (the first reason wins):
    /// the reason of its exit (`ExitReason::of_exit`).
    pub stopped_for: OnceLock<crate::control::ExitReason>,
    /// Why the recycler picked it (requests or memory), for when its replacement commits.
    pub recycle_for: Mutex<Option<crate::control::ExitReason>>,
    /// The kernel's count of OOM kills when it started (`/proc/vmstat`), to tell an OOM kill.
    pub oom_kills_at_start: OnceLock<u64>,
    /// Its CPU time at the previous looks, for `WorkerStats::cpu_percent`.
    pub cpu: Mutex<CpuWindow>,
}

/// A handle to one worker. Cheap to clone; stays valid (reporting `is_dead`) after the worker
/// exits.
#[derive(Clone)]
pub struct WorkerHandle {
    pub(crate) shared: Arc<WorkerShared>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.id())
            .field("pid", &self.pid())
            .field("state", &self.state())
            .finish()
    }
}

impl PartialEq for WorkerHandle {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }
}

impl WorkerHandle {
    pub(crate) fn new(id: usize, seq: u64, expect_protocol: bool) -> Self {
        let (outbox, inbox) = mpsc::unbounded_channel();
        let (notices, notice_queue) = mpsc::unbounded_channel();
        Self {
            shared: Arc::new(WorkerShared {
                id,
                seq,
                started: Instant::now(),
                pid: AtomicU32::new(0),
                pending_signals: Mutex::new(Vec::new()),
                state: AtomicU8::new(WorkerState::Starting as u8),
                connected: AtomicBool::new(true),
                exited_after_disconnect: AtomicBool::new(false),
                stop_asked: AtomicBool::new(false),
                on_trial: AtomicBool::new(false),
                speaks_protocol: AtomicBool::new(false),
                expect_protocol,
                accepted: AtomicU64::new(0),
                request_limit: AtomicU64::new(u64::MAX),
                recycling: AtomicBool::new(false),
                limit_reached: OnceLock::new(),
                outbox,
                inbox: Mutex::new(Some(inbox)),
                notices,
                notice_queue: Mutex::new(Some(notice_queue)),
                exit: OnceLock::new(),
                worker_end: OnceLock::new(),
                taken_back: AtomicU64::new(0),
                kill_reason: OnceLock::new(),
                stopped_for: OnceLock::new(),
                recycle_for: Mutex::new(None),
                oom_kills_at_start: OnceLock::new(),
                cpu: Mutex::new(CpuWindow::default()),
            }),
        }
    }

    /// The primary stops (or kills) it for `reason`; the first reason given is the one its exit
    /// reports.
    pub(crate) fn stop_for(&self, reason: crate::control::ExitReason) {
        let _ = self.shared.stopped_for.set(reason);
    }

    /// The worker's stable slot id (0..N-1); a replacement gets the same id.
    pub fn id(&self) -> usize {
        self.shared.id
    }

    /// A number unique to this worker process among all workers of the cluster; each worker
    /// started gets a larger one than every worker before it.
    pub fn unique_id(&self) -> u64 {
        self.shared.seq
    }

    /// The worker's process id (0 until it has been started).
    pub fn pid(&self) -> u32 {
        self.shared.pid.load(Ordering::Acquire)
    }

    /// Where the worker is in its life.
    pub fn state(&self) -> WorkerState {
        WorkerState::from_u8(self.shared.state.load(Ordering::Acquire))
    }

    /// Moves the worker forward to `to`; false (and nothing changes) when it is already there or
    /// beyond. States only go forward (starting, online, ready, draining, exited; any may be
    /// skipped), so two racing changes cannot undo each other: a `STOPPING=1` read after the
    /// exit leaves the worker exited. Call it through `Core::transition`, which also says so.
    pub(crate) fn advance(&self, to: WorkerState) -> bool {
        self.shared.state.fetch_max(to as u8, Ordering::AcqRel) < to as u8
    }

    /// Tells the worker's supervision loop something about it (see `WorkerNotice`).
    pub(crate) fn notice(&self, notice: WorkerNotice) {
        let _ = self.shared.notices.send(notice);
    }

    /// The notices for the worker's supervision loop (once).
    pub(crate) fn take_notices(&self) -> Option<mpsc::UnboundedReceiver<WorkerNotice>> {
        self.shared
            .notice_queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// True while the primary may give this worker new connections: it is ready (see
    /// `Readiness`), not a replacement on trial, and has not been asked to stop.
    pub(crate) fn takes_connections(&self) -> bool {
        self.state() == WorkerState::Ready && !self.shared.on_trial.load(Ordering::Relaxed)
    }

    /// True while it is a replacement on trial.
    pub(crate) fn on_trial(&self) -> bool {
        self.shared.on_trial.load(Ordering::Relaxed)
    }

    /// Marks the worker as a replacement on trial (or not any more).
    pub(crate) fn set_on_trial(&self, on_trial: bool) {
        self.shared.on_trial.store(on_trial, Ordering::Relaxed);
    }

    /// Records the process id once the process exists, and delivers the signals asked for
    /// before it did.
    pub(crate) fn set_pid(&self, pid: u32) {
        let pending = {
            let mut pending = self.shared.pending_signals.lock().unwrap();
            self.shared.pid.store(pid, Ordering::Release);
            std::mem::take(&mut *pending)
        };
        for (signal, reach) in pending {
            let _ = self.deliver(signal, reach);
        }
    }

    /// The queue of packets for the worker, for its writer task (once).
    pub(crate) fn take_outbox(&self) -> Option<mpsc::UnboundedReceiver<Outgoing>> {
        self.shared.inbox.lock().unwrap().take()
    }

    /// How the process ended, once it has.
    pub(crate) fn exit_info(&self) -> Option<ExitInfo> {
        self.shared.exit.get().copied()
    }

    /// How long ago the worker was started.
    pub fn uptime(&self) -> std::time::Duration {
        self.shared.started.elapsed()
    }

    /// Connections handed to this worker (round-robin and proxy modes).
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections handed to this worker that it kept:
    /// [`connections_accepted`](Self::connections_accepted) less those taken back for other workers (it stopped
    /// reading, or gave them back).
    pub fn connections_served(&self) -> u64 {
        let taken_back = self.shared.taken_back.load(Ordering::Relaxed);
        self.connections_accepted().saturating_sub(taken_back)
    }

    /// Counts `n` connections handed to this worker that went to other workers instead.
    pub(crate) fn count_taken_back(&self, n: u64) {
        self.shared.taken_back.fetch_add(n, Ordering::Relaxed);
    }

    /// Counts `n` more connections handed to this worker, waking the recycler at the limit.
    pub(crate) fn count_connections(&self, n: u64) {
        let before = self.shared.accepted.fetch_add(n, Ordering::Relaxed);
        let limit = self.shared.request_limit.load(Ordering::Relaxed);
        if before < limit && before + n >= limit {
            if let Some(notify) = self.shared.limit_reached.get() {
                notify.notify_one();
            }
        }
    }

    /// True from `fork()` until the worker's IPC channel closes (Node's `isConnected()`).
    pub fn is_connected(&self) -> bool {
        self.shared.connected.load(Ordering::Acquire)
    }

    /// True once the process has exited (Node's `isDead()`).
    pub fn is_dead(&self) -> bool {
        self.shared.exit.get().is_some()
    }

    /// True when the worker was disconnected or killed on purpose, so its exit is expected and
    /// it is not restarted (Node's `exitedAfterDisconnect`).
    pub fn exited_after_disconnect(&self) -> bool {
        self.shared.exited_after_disconnect.load(Ordering::Acquire)
    }

    /// True once the worker completed the protocol handshake (a forkline-aware worker).
    pub fn speaks_protocol(&self) -> bool {
        self.shared.speaks_protocol.load(Ordering::Acquire)
    }

    /// Sends a message to the worker (any serde type, JSON on the wire). Fails at once if it is
    /// too large for one packet or the worker is no longer connected. Sent before the worker
    /// is online, it waits in a queue and is delivered, in order, right after the handshake.
    pub fn send<T: Serialize>(&self, msg: &T) -> Result<()> {
        let data = serde_json::to_value(msg).map_err(|e| Error::Protocol(e.to_string()))?;
        self.send_packet(&ToWorker::Message { data })
    }

    pub(crate) fn send_packet(&self, msg: &ToWorker) -> Result<()> {
        let bytes = encode(msg)?;
        if !self.is_connected() {
            return Err(Error::NotConnected(self.id()));
        }
        self.shared
            .outbox
            .send(bytes)
            .map_err(|_| Error::NotConnected(self.id()))
    }

    /// Asks the worker to stop gracefully: a forkline worker gets a `disconnect` message (it
    /// stops accepting, finishes and exits); a program that does not speak the protocol gets
    /// SIGTERM, sent to its process group. The worker will not be restarted, and gets no new
    /// connections from now on. Asked before the process exists, it takes effect as soon as
    /// it does.
    pub fn disconnect(&self) {
        self.shared
            .exited_after_disconnect
            .store(true, Ordering::Release);
        self.begin_stop();
    }

    /// Asks the worker to stop like [`disconnect`](Self::disconnect), but keeps the restart
    /// policy in force (used for recycling and reloads, where the slot gets a replacement).
    pub(crate) fn begin_stop(&self) {
        if self.is_dead() || self.shared.stop_asked.swap(true, Ordering::AcqRel) {
            return;
        }
        self.advance(WorkerState::Draining);
        // A library worker that has not finished its handshake gets the `disconnect` right
        // after `welcome`, from the queue.
        let speaks = self.speaks_protocol() || self.shared.expect_protocol;
        if speaks && self.send_packet(&ToWorker::Disconnect).is_ok() {
            return;
        }
        let _ = self.signal_group(Signal::SIGTERM);
    }

    /// Sends `signal` to the worker process (Node's `kill()`); the worker is not restarted and
    /// gets no new connections. Asked before the process exists, it is sent as soon as it does.
    pub fn kill(&self, signal: Signal) -> Result<()> {
        self.shared
            .exited_after_disconnect
            .store(true, Ordering::Release);
        self.advance(WorkerState::Draining);
        self.signal(signal)
    }

    /// Sends `signal` to the process without changing the restart decision.
    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        self.deliver(signal, Reach::Process)
    }

    /// Sends `signal` to the worker's process group: the worker and everything it started.
    pub(crate) fn signal_group(&self, signal: Signal) -> Result<()> {
        self.deliver(signal, Reach::Group)
    }

    fn deliver(&self, signal: Signal, reach: Reach) -> Result<()> {
        if self.is_dead() {
            return Ok(());
        }
        let pid = {
            let mut pending = self.shared.pending_signals.lock().unwrap();
            let pid = self.pid();
            if pid == 0 {
                pending.push((signal, reach));
                return Ok(());
            }
            pid
        };
        if signal == Signal::SIGKILL && reach == Reach::Group {
            // The primary kills a worker's group outside a stop only when the worker broke the
            // protocol or its watchdog fired (a ready timeout says so first): a restart after
            // this exit counts as `killed`. A planned stop books no restart, so it counts nothing.
            let _ = self.shared.kill_reason.set(RestartReason::Killed);
        }
        match reach {
            Reach::Process => sys::signal_pid(pid, signal),
            Reach::Group => sys::signal_group(pid, signal),
        }
        .map_err(Error::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_only_moves_forward() {
        let worker = WorkerHandle::new(0, 1, false);
        assert!(worker.advance(WorkerState::Online));
        assert!(
            !worker.advance(WorkerState::Online),
            "the same change twice"
        );
        assert!(
            worker.advance(WorkerState::Draining),
            "ready may be skipped"
        );
        assert!(
            !worker.advance(WorkerState::Ready),
            "draining never turns ready"
        );
        assert!(worker.advance(WorkerState::Exited));
        // A `STOPPING=1` read after the exit was recorded leaves the worker exited.
        assert!(!worker.advance(WorkerState::Draining));
        assert_eq!(worker.state(), WorkerState::Exited);
    }
}
