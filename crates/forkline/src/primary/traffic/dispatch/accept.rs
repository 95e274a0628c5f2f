//! The tasks and threads that drive the dispatcher: each round-robin listener's accept loop
//! (a task on the primary's runtime, or several accept threads), its stop signal, and the
//! reclaimer's turns.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::conn::Conn;
use super::dispatcher::*;
use crate::primary::core::Core;
use crate::primary::traffic::coalesce::{CoalesceGate, Coalescer};
use crate::primary::traffic::counters::AcceptErrorKind;
use crate::primary::traffic::listeners::BoundListener;

/// After an accept error, the accept loop waits this long before it tries again, logging the
/// first error of a run and the recovery, not every retry.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

/// Logs a run of accept errors once, and its end.
#[derive(Debug, Default)]
struct AcceptErrors {
    failing_since: Option<std::time::Instant>,
    retries: u64,
}

impl AcceptErrors {
    fn failed(&mut self, error: &io::Error) {
        if self.failing_since.is_none() {
            tracing::warn!(%error, "accept failed; retrying every {ACCEPT_RETRY:?} until it works");
            self.failing_since = Some(std::time::Instant::now());
        }
        self.retries += 1;
    }

    fn worked(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                retries = self.retries,
                after = ?since.elapsed(),
                "accept works again"
            );
            self.retries = 0;
        }
    }
}

/// Shows an accept loop's coalescing flag in `Dispatcher::traffic` while the loop runs.
struct CoalescingShown<'a> {
    dispatcher: &'a Dispatcher,
    listener: u64,
}

impl<'a> CoalescingShown<'a> {
    fn new(dispatcher: &'a Dispatcher, listener: u64, on: Arc<AtomicBool>) -> Self {
        dispatcher.coalescing.lock().unwrap().insert(listener, on);
        Self {
            dispatcher,
            listener,
        }
    }
}

impl Drop for CoalescingShown<'_> {
    fn drop(&mut self) {
        self.dispatcher
            .coalescing
            .lock()
            .unwrap()
            .remove(&self.listener);
    }
}

/// Starts the primary's accept loop for a round-robin listener.
pub(crate) fn start_accepting(core: &Core, listener: &BoundListener) {
    if let Some(socket) = listener.socket.clone() {
        let dispatcher = core.dispatcher().clone();
        let stop = stop_signal(core, listener);
        let id = listener.id;
        let coalesce = core.opts().accept_coalesce;
        let always = core.opts().accept_coalesce_always;
        // Decided once, when the listener starts accepting, from the workers kept then.
        let threads = core
            .opts()
            .accept_threads
            .unwrap_or_else(|| crate::primary::options::auto_accept_threads(core.target()));
        if threads > 1 {
            let shared = AcceptThreads {
                listener: id,
                socket: socket.clone(),
                gate: coalesce.map(|window| CoalesceGate::new(window, always)),
            };
            match spawn_accept_threads(threads, &dispatcher, shared, &stop) {
                Ok(()) => return,
                // Not even one: the accept task below does the work instead.
                Err(e) => tracing::warn!(
                    error = %e,
                    "could not start accept threads; accepting on the primary's runtime"
                ),
            }
        }
        crate::primary::task::spawn("accept", async move {
            if let Err(e) = dispatcher
                .accept_loop(id, socket, coalesce, always, stop)
                .await
            {
                tracing::error!(error = %e, "accept loop failed");
            }
        });
    }
}

/// What a round-robin listener's accept threads share: its socket, and whether they coalesce
/// (`None`: never).
struct AcceptThreads {
    listener: u64,
    socket: Arc<OwnedFd>,
    gate: Option<CoalesceGate>,
}

/// Runs `count` accept loops for a listener, each on an OS thread of its own, blocked in
/// `epoll_wait` on a private epoll instance holding the listening socket with
/// `EPOLLEXCLUSIVE`, so a connection wakes one accept thread, not all of them (tokio's
/// registrations are not exclusive, and an exclusive one nested in another epoll wakes every
/// thread again). They hand off through the same dispatcher: its sends are plain non-blocking
/// `sendmsg` calls, and its wake-ups (`Notify`, `watch`) work across runtimes; a small runtime
/// of each thread's own waits for them. Each epoll also holds the read end of a pipe whose
/// write end a task on the primary's runtime closes when `stop` fires: every thread wakes,
/// leaves, and closes its copy of the socket at once, as the single accept task would. An
/// error when not even one thread could start; fewer than `count` are logged.
fn spawn_accept_threads(
    count: usize,
    dispatcher: &Arc<Dispatcher>,
    shared: AcceptThreads,
    stop: &watch::Receiver<bool>,
) -> io::Result<()> {
    let (woken, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let woken = Arc::new(woken);
    let shared = Arc::new(shared);
    let mut started = 0;
    for index in 0..count {
        let (dispatcher, shared, woken) = (dispatcher.clone(), shared.clone(), woken.clone());
        let stop = stop.clone();
        let run = move || {
            if let Err(e) = dispatcher.accept_exclusive(&shared, &woken, stop) {
                tracing::error!(error = %e, "accept thread failed");
            }
        };
        match std::thread::Builder::new()
            .name(format!("accept-{index}"))
            .spawn(run)
        {
            Ok(_) => started += 1,
            Err(e) if started == 0 => return Err(e),
            Err(e) => tracing::warn!(error = %e, started, count, "fewer accept threads"),
        }
    }
    let listener = shared.listener;
    if let Some(gate) = &shared.gate {
        dispatcher
            .coalescing
            .lock()
            .unwrap()
            .insert(listener, gate.on());
    }
    let (dispatcher, mut waiting) = (dispatcher.clone(), stop.clone());
    crate::primary::task::spawn("accept-threads-stop", async move {
        let _ = waiting.wait_for(|s| *s).await;
        drop(wake);
        dispatcher.coalescing.lock().unwrap().remove(&listener);
    });
    Ok(())
}

/// Fires when the cluster stops accepting or `listener` is released.
pub(crate) fn stop_signal(core: &Core, listener: &BoundListener) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut cluster_stop = core.stop_accepting().subscribe();
    let mut closed = listener.closed.subscribe();
    crate::primary::task::spawn("accept-stop", async move {
        tokio::select! {
            _ = cluster_stop.wait_for(|s| *s) => {}
            _ = closed.wait_for(|c| *c) => {}
            _ = tx.closed() => return,
        }
        tx.send_replace(true);
    });
    rx
}

/// Takes the reclaimer's turns: every quarter of the handoff timeout, takes back handoffs that
/// stuck workers left unread (see `Dispatcher::reclaim_stuck`), until the cluster stops.
pub(crate) fn start_reclaiming(core: &Core) {
    let dispatcher = core.dispatcher().clone();
    let deadline = core.opts().handoff_timeout;
    let mut stop = core.stop_accepting().subscribe();
    crate::primary::task::spawn("reclaim", async move {
        let mut tick = tokio::time::interval((deadline / 4).max(Duration::from_millis(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            dispatcher.reclaim_stuck(deadline);
        }
    });
}

/// Why `accept_queued` stopped.
#[derive(Debug)]
enum Stopped {
    /// The socket's queue is empty.
    Drained,
    /// No worker has room for more.
    NoRoom,
    /// `accept` failed (EMFILE, ENFILE, ENOBUFS, ...): connections may still be queued.
    Failed(io::Error),
}

impl Dispatcher {
    /// Accepts on `listener`'s socket until `stop` fires, handing connections out in batches.
    /// Stops accepting (leaving connections in the kernel backlog) while no worker has room.
    ///
    /// With a `coalesce` window, a wake-up that found two connections or more is followed by a
    /// timer wait instead of a socket wait, as long as the governor finds that it pays, or
    /// `always` (see `coalesce`).
    pub(crate) async fn accept_loop(
        self: Arc<Self>,
        listener: u64,
        socket: Arc<OwnedFd>,
        coalesce: Option<Duration>,
        always: bool,
        mut stop: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let dup = socket.try_clone()?;
        set_nonblocking(&dup)?;
        let async_fd = crate::sys::async_fd(dup, tokio::io::Interest::READABLE)?;
        let gate = coalesce.map(|window| CoalesceGate::new(window, always));
        let _shown = gate
            .as_ref()
            .map(|gate| CoalescingShown::new(&self, listener, gate.on()));
        let mut coalescer = gate.map(Coalescer::new).transpose()?;
        let mut errors = AcceptErrors::default();
        loop {
            // Wait for room (a worker with credit), or stop.
            loop {
                let changed = self.changed.notified();
                if self.has_room(listener) {
                    break;
                }
                tokio::select! {
                    _ = changed => {}
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                }
            }
            let (accepted, stopped) = match &coalescer {
                Some(coalescer) if coalescer.hot() => {
                    tokio::select! {
                        waited = coalescer.wait() => waited?,
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                    self.accept_queued(listener, async_fd.get_ref()).await
                }
                _ => {
                    let mut guard = tokio::select! {
                        guard = async_fd.readable() => guard?,
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    };
                    let (accepted, stopped) =
                        self.accept_queued(listener, async_fd.get_ref()).await;
                    // Readiness is cleared only once the queue was seen empty: after an error
                    // or with no room, connections may still wait in it.
                    if matches!(stopped, Stopped::Drained) {
                        guard.clear_ready();
                    }
                    (accepted, stopped)
                }
            };
            if let Some(coalescer) = &mut coalescer {
                coalescer.record(accepted);
            }
            match stopped {
                Stopped::Failed(error) => {
                    self.accept_failed(&mut errors, &error);
                    tokio::select! {
                        _ = tokio::time::sleep(ACCEPT_RETRY) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                    }
                }
                Stopped::Drained | Stopped::NoRoom => errors.worked(),
            }
        }
    }

    /// An accept thread's loop (see `spawn_accept_threads`): waits for room, then for the
    /// socket (exclusively), accepts what is queued, until `stop` fires (`woken` turns readable
    /// then, and wakes it at once). It coalesces like `accept_loop`: a wake-up that found two connections or
    /// more is followed by a sleep of one window, while the listener's governor, shared by its
    /// accept threads, finds it pays (or always, without one); while one thread sleeps, the
    /// socket's wake-ups go to the others.
    fn accept_exclusive(
        &self,
        threads: &AcceptThreads,
        woken: &OwnedFd,
        mut stop: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let listener = threads.listener;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let dup = threads.socket.try_clone()?;
        set_nonblocking(&dup)?;
        let epoll = crate::sys::ExclusiveEpoll::new(&dup, std::os::fd::AsFd::as_fd(woken))?;
        let mut hot = false;
        let mut errors = AcceptErrors::default();
        // Stops when told to, or when nobody can tell it any more (the stop signal's sender is
        // gone with the primary's runtime; the pipe's write end with it, so nothing blocks).
        let stopped = |stop: &watch::Receiver<bool>| *stop.borrow() || stop.has_changed().is_err();
        while !stopped(&stop) {
            let changed = self.changed.notified();
            if !self.has_room(listener) {
                runtime.block_on(async {
                    tokio::select! {
                        _ = changed => {}
                        _ = stop.wait_for(|s| *s) => {}
                    }
                });
                continue;
            }
            match &threads.gate {
                Some(gate) if hot => std::thread::sleep(gate.window()),
                _ => {
                    if !epoll.wait(-1)? {
                        continue;
                    }
                }
            }
            if stopped(&stop) {
                break;
            }
            let (accepted, stopped) = runtime.block_on(self.accept_queued(listener, &dup));
            hot = threads
                .gate
                .as_ref()
                .is_some_and(|gate| gate.record(accepted));
            match stopped {
                Stopped::Failed(error) => {
                    self.accept_failed(&mut errors, &error);
                    std::thread::sleep(ACCEPT_RETRY);
                }
                Stopped::Drained | Stopped::NoRoom => errors.worked(),
            }
        }
        Ok(())
    }

    /// An accept failed: counted by kind (`/metrics`), and logged when failing starts.
    fn accept_failed(&self, errors: &mut AcceptErrors, error: &io::Error) {
        self.accept_errors[AcceptErrorKind::of(error).index()].fetch_add(1, Ordering::Relaxed);
        errors.failed(error);
    }

    /// Accepts and hands out what is queued on the socket, `ACCEPT_BATCH` at a time, until it
    /// is empty, no worker has room, or `accept` fails. Returns how many connections it took
    /// and why it stopped.
    async fn accept_queued(&self, listener: u64, socket: &OwnedFd) -> (usize, Stopped) {
        let mut total = 0;
        loop {
            let mut batch = Vec::new();
            let mut stopped = None;
            // One clock read per batch: where the handoff latency of its connections starts.
            let accepted = Instant::now();
            while batch.len() < ACCEPT_BATCH {
                match accept(socket) {
                    Ok(Some((fd, peer))) => batch.push(Conn {
                        listener,
                        fd,
                        peer,
                        accepted,
                        refused_by: None,
                    }),
                    Ok(None) => {
                        stopped = Some(Stopped::Drained);
                        break;
                    }
                    // EMFILE and friends: the queue is still there (the batch shrinks to what
                    // the fd limit leaves).
                    Err(e) => {
                        stopped = Some(Stopped::Failed(e));
                        break;
                    }
                }
            }
            total += batch.len();
            if !batch.is_empty() {
                self.dispatch(batch);
            }
            match stopped {
                Some(stopped) => return (total, stopped),
                None if !self.has_room(listener) => return (total, Stopped::NoRoom),
                None => {}
            }
        }
    }
}
