//! The cluster's private core, the one context every task of the primary takes (`&Core`): the
//! settings, the one lock around slot state and the registry of live worker processes, the
//! tables the tasks drive (listeners, dispatch, proxy, notify sockets, upgrades, output), the
//! counters, and the signals tasks use to wake each other. Its fields are private; what the
//! tasks share goes through the methods below, grouped as the fields are. `Cluster` is a thin
//! public handle over it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Instant;

use tokio::sync::{watch, Notify};

use crate::primary::event::{Event, EventBus, EventStream};
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::lifecycle::keeper::Keeper;
use crate::primary::lifecycle::notify_dir::NotifyDir;
use crate::primary::lifecycle::output_buffer::OutputBuffer;
use crate::primary::lifecycle::slots::{Seq, Slots};
use crate::primary::ops::upgrade_state::Upgrades;
use crate::primary::options::ClusterOptions;
use crate::primary::status::{Shutdown, SlotView};
use crate::primary::traffic::counters::Traffic;
use crate::primary::traffic::dispatch::dispatcher::Dispatcher;
use crate::primary::traffic::listeners::{BoundListener, ListenerTable};
use crate::primary::traffic::proxy::ProxyTable;

/// What the one lock guards: slot state (written only through `Slots`' methods) and the
/// worker processes that have not exited, by unique id.
#[derive(Debug)]
pub(crate) struct State {
    pub slots: Slots,
    pub live: BTreeMap<Seq, WorkerHandle>,
    pub next_seq: Seq,
}

impl State {
    /// The live handle of `seq`.
    pub(super) fn worker(&self, seq: Option<Seq>) -> Option<WorkerHandle> {
        seq.and_then(|seq| self.live.get(&seq)).cloned()
    }
}

/// How many things of each kind happened, for stats and metrics.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Notify messages dropped because they did not come from the worker's process group.
    pub notify_rejected: AtomicU64,
    /// Rolling reloads that finished.
    pub reloads_ok: AtomicU64,
    /// Rolling reloads that failed.
    pub reloads_failed: AtomicU64,
}

/// The tables of the traffic room: who listens where and how connections reach workers.
struct TrafficTables {
    listeners: ListenerTable,
    /// Listeners bound up front, in `LISTEN_FDS` order.
    prebound: Vec<Arc<BoundListener>>,
    dispatcher: Arc<Dispatcher>,
    proxy: Arc<ProxyTable>,
}

/// The signals tasks wake each other with.
struct Signals {
    /// Notified whenever a worker changes state or exits.
    changed: Notify,
    /// Woken when a worker reaches `max_requests`.
    limit_reached: Arc<Notify>,
    /// Set when the cluster stops accepting (shutdown began).
    stop_accepting: watch::Sender<bool>,
    /// Set when a stop was asked for with a shutdown delay: the cluster is a lame duck (not
    /// ready for new traffic, still serving) until the graceful stop begins.
    lame_duck: watch::Sender<bool>,
    /// Set once the cluster has shut down.
    finished: watch::Sender<Option<Shutdown>>,
}

/// Everything the primary's tasks share.
pub(crate) struct Core {
    /// This core, for the tasks a method starts (they outlive the borrow).
    me: Weak<Core>,
    opts: ClusterOptions,
    expect_protocol: bool,
    started: Instant,
    events: EventBus,
    initial_events: Mutex<Option<EventStream>>,
    state: Mutex<State>,
    traffic: TrafficTables,
    signals: Signals,
    /// One rolling reload at a time.
    reload_lock: tokio::sync::Mutex<()>,
    /// Kills every worker's process group if the primary dies (`None` if it could not start).
    keeper: Mutex<Option<Arc<Keeper>>>,
    /// Per-worker `NOTIFY_SOCKET`s live here (when enabled).
    notify_dir: Option<NotifyDir>,
    counters: Counters,
    /// Upgrades: one at a time, the program to start again, the handover.
    upgrades: Upgrades,
    /// Recent worker output, for `forkline logs`.
    output: OutputBuffer,
}

impl Core {
    /// A core with no worker yet.
    pub(super) fn new(
        opts: ClusterOptions,
        expect_protocol: bool,
        listeners: ListenerTable,
        prebound: Vec<Arc<BoundListener>>,
        notify_dir: Option<NotifyDir>,
    ) -> Arc<Core> {
        let events = EventBus::default();
        let initial = events.subscribe();
        Arc::new_cyclic(|me| Core {
            me: me.clone(),
            traffic: TrafficTables {
                listeners,
                prebound,
                dispatcher: Arc::new(Dispatcher::new(opts.balance, opts.credit_window)),
                proxy: Arc::new(ProxyTable::new(opts.proxy_queue_timeout)),
            },
            signals: Signals {
                changed: Notify::new(),
                limit_reached: Arc::new(Notify::new()),
                stop_accepting: watch::channel(false).0,
                lame_duck: watch::channel(false).0,
                finished: watch::channel(None).0,
            },
            notify_dir,
            expect_protocol,
            events,
            initial_events: Mutex::new(Some(initial)),
            state: Mutex::new(State {
                slots: Slots::new(opts.workers, opts.restart, opts.backoff),
                live: BTreeMap::new(),
                next_seq: 0,
            }),
            reload_lock: tokio::sync::Mutex::new(()),
            keeper: Mutex::new(None),
            counters: Counters::default(),
            started: Instant::now(),
            output: OutputBuffer::new(opts.output_buffer),
            upgrades: Upgrades::new(),
            opts,
        })
    }

    /// This core, owned: for a task that outlives the borrow.
    pub(super) fn arc(&self) -> Arc<Core> {
        self.me
            .upgrade()
            .expect("a borrowed core is owned by an Arc that lives")
    }

    // --- settings ---

    /// The settings the cluster runs with.
    pub(super) fn opts(&self) -> &ClusterOptions {
        &self.opts
    }

    /// True when workers are library workers that speak the protocol.
    pub(super) fn expect_protocol(&self) -> bool {
        self.expect_protocol
    }

    /// When the cluster started.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    // --- events and signals ---

    /// The event bus.
    pub(super) fn events(&self) -> &EventBus {
        &self.events
    }

    /// Emits `event`.
    pub(super) fn emit(&self, event: Event) {
        self.events.emit(event);
    }

    /// The event stream: every event since start the first time, from now on after that.
    pub(super) fn event_stream(&self) -> EventStream {
        self.initial_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| self.events.subscribe())
    }

    /// Notified whenever a worker changes state or exits.
    pub(super) fn changed(&self) -> &Notify {
        &self.signals.changed
    }

    /// Woken when a worker reaches `max_requests`.
    pub(super) fn limit_reached(&self) -> &Arc<Notify> {
        &self.signals.limit_reached
    }

    /// Set when the cluster stops accepting (shutdown began).
    pub(super) fn lame_duck(&self) -> &watch::Sender<bool> {
        &self.signals.lame_duck
    }

    pub(super) fn stop_accepting(&self) -> &watch::Sender<bool> {
        &self.signals.stop_accepting
    }

    /// Set once the cluster has shut down.
    pub(super) fn finished(&self) -> &watch::Sender<Option<Shutdown>> {
        &self.signals.finished
    }

    /// Waits until `done` holds, checked now and after every worker change, or until
    /// `deadline`; true when it holds.
    pub(super) async fn wait_until(&self, deadline: Instant, done: impl Fn() -> bool) -> bool {
        loop {
            // Created before the check, so a change between the check and the wait is seen.
            let changed = self.signals.changed.notified();
            if done() {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return done();
            }
        }
    }

    // --- workers and slots ---

    /// The slot state and live workers, locked. Hold it briefly; never across an `await`.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves `worker` forward to `to` (the one place a worker's state changes) and says what
    /// changed: the `online` and `ready` events go out here. A state never goes back: a
    /// `STOPPING=1` read after the exit was recorded leaves the worker exited. False when the
    /// worker was already at `to` or beyond.
    pub(super) fn transition(&self, worker: &WorkerHandle, to: WorkerState) -> bool {
        self.transition_then(worker, to, || {})
    }

    /// `transition`, running `first` after the change and before anyone hears of it (steer
    /// mode lets the kernel steer to a ready worker before `ready` goes out).
    pub(super) fn transition_then(
        &self,
        worker: &WorkerHandle,
        to: WorkerState,
        first: impl FnOnce(),
    ) -> bool {
        if !worker.advance(to) {
            return false;
        }
        first();
        // Proxy mode: who the kernel steers to follows who takes connections.
        if self.opts().mode == crate::protocol::Mode::Proxy {
            self.proxy().sync();
        }
        match to {
            WorkerState::Online => self.emit(Event::Online {
                worker: worker.clone(),
            }),
            WorkerState::Ready => self.emit(Event::Ready {
                worker: worker.clone(),
            }),
            _ => {}
        }
        self.signals.changed.notify_waiters();
        true
    }

    /// Every worker whose process has not exited (replacements on trial included), ordered by
    /// slot.
    pub(super) fn workers(&self) -> Vec<WorkerHandle> {
        let mut all: Vec<WorkerHandle> = self.state().live.values().cloned().collect();
        all.sort_by_key(|w| (w.id(), w.unique_id()));
        all
    }

    /// The current worker of `slot`, while it runs.
    pub(super) fn worker(&self, slot: usize) -> Option<WorkerHandle> {
        let state = self.state();
        state.worker(state.slots.current(slot))
    }

    /// Supervision state of every slot.
    pub(crate) fn slots(&self) -> Vec<SlotView> {
        let state = self.state();
        state
            .slots
            .all()
            .map(|(slot, record)| {
                let current = state.worker(record.current);
                SlotView {
                    slot,
                    // 0 until the process exists: no pid yet.
                    pid: current.as_ref().map(|w| w.pid()).filter(|pid| *pid != 0),
                    state: current.as_ref().map(|w| w.state()),
                    replacement_pid: state
                        .worker(record.candidate)
                        .map(|w| w.pid())
                        .filter(|pid| *pid != 0),
                    restarts: record.restarts,
                    failures: record.failures,
                    crash_loop: record.crash_loop,
                    gave_up: record.gave_up,
                    last_exit: record.last_exit,
                    restart_at: record.restart.map(|r| r.at),
                    connections: current.map_or(0, |w| w.connections_accepted()),
                }
            })
            .collect()
    }

    /// The number of slots the cluster keeps.
    pub(super) fn target(&self) -> usize {
        self.state().slots.target()
    }

    /// True once shutdown has begun.
    pub(super) fn is_stopping(&self) -> bool {
        self.state().slots.is_stopping()
    }

    /// True when as many workers as the cluster keeps are ready and no restart is due.
    pub(super) fn all_ready(&self) -> bool {
        let slots = self.slots();
        let ready = slots
            .iter()
            .filter(|s| s.state == Some(WorkerState::Ready))
            .count();
        ready >= self.target() && slots.iter().all(|s| s.restart_at.is_none())
    }

    /// The keeper, while one runs.
    pub(super) fn keeper(&self) -> Option<Arc<Keeper>> {
        self.keeper
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Puts `keeper` in place (at start, and when a dead one is replaced).
    pub(super) fn set_keeper(&self, keeper: Option<Arc<Keeper>>) {
        *self.keeper.lock().unwrap_or_else(|p| p.into_inner()) = keeper;
    }

    /// The directory of the workers' notify sockets, when enabled.
    pub(super) fn notify_dir(&self) -> Option<&NotifyDir> {
        self.notify_dir.as_ref()
    }

    // --- traffic ---

    /// Every listener, by key.
    pub(super) fn listeners(&self) -> &ListenerTable {
        &self.traffic.listeners
    }

    /// Listeners bound up front, in `LISTEN_FDS` order.
    pub(super) fn prebound(&self) -> &[Arc<BoundListener>] {
        &self.traffic.prebound
    }

    /// The round-robin dispatcher.
    pub(super) fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.traffic.dispatcher
    }

    /// The proxy's table of workers' ports.
    pub(super) fn proxy(&self) -> &Arc<ProxyTable> {
        &self.traffic.proxy
    }

    /// The primary stops routing to listeners that were released.
    pub(super) fn forget_listeners(&self, released: Vec<Arc<BoundListener>>) {
        for listener in released {
            tracing::info!(address = %listener.local, "no worker listens any more; socket closed");
            self.traffic.dispatcher.forget_listener(listener.id);
        }
    }

    /// The connection counters of the dispatcher (round-robin) and the proxy, added up: each
    /// mode counts only its own connections.
    pub(super) fn traffic(&self) -> Traffic {
        let mut traffic = self.traffic.dispatcher.traffic();
        traffic.add(self.traffic.proxy.traffic());
        traffic
    }

    /// The addresses the cluster listens on, sorted.
    pub(super) fn listen_addresses(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .traffic
            .listeners
            .all()
            .iter()
            .map(|l| l.local.clone())
            .collect();
        all.sort();
        all
    }

    // --- operations ---

    /// One rolling reload at a time.
    pub(super) fn reload_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.reload_lock
    }

    /// True while a rolling reload is in progress.
    pub(super) fn is_reloading(&self) -> bool {
        self.reload_lock.try_lock().is_err()
    }

    /// The counters.
    pub(super) fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Rolling reloads so far: (finished, failed).
    pub(super) fn reload_counts(&self) -> (u64, u64) {
        (
            self.counters.reloads_ok.load(Ordering::Relaxed),
            self.counters.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Upgrades of the primary: one at a time, the program to start, the handover.
    pub(super) fn upgrades(&self) -> &Upgrades {
        &self.upgrades
    }

    /// Recent worker output.
    pub(super) fn output(&self) -> &OutputBuffer {
        &self.output
    }
}
