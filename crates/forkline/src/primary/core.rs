//! The cluster's private core, shared by every task of the primary: the settings, the one lock
//! around slot state and the registry of live worker processes, the listeners, dispatch and
//! proxy tables, and the signals tasks use to wake each other. `Cluster` is a thin public
//! handle over it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use crate::primary::cluster::Shutdown;
use crate::primary::event::{EventBus, EventStream};
use crate::primary::handle::WorkerHandle;
use crate::primary::lifecycle::keeper::Keeper;
use crate::primary::lifecycle::notify::NotifyDir;
use crate::primary::lifecycle::slots::{Seq, Slots};
use crate::primary::options::ClusterOptions;
use crate::primary::traffic::dispatch::Dispatcher;
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
    pub fn worker(&self, seq: Option<Seq>) -> Option<WorkerHandle> {
        seq.and_then(|seq| self.live.get(&seq)).cloned()
    }
}

/// Everything the primary's tasks share.
pub(crate) struct Core {
    pub opts: ClusterOptions,
    pub expect_protocol: bool,
    pub events: EventBus,
    pub initial_events: Mutex<Option<EventStream>>,
    state: Mutex<State>,
    pub listeners: ListenerTable,
    /// Listeners bound up front, in `LISTEN_FDS` order.
    pub prebound: Vec<Arc<BoundListener>>,
    pub dispatcher: Arc<Dispatcher>,
    pub proxy: Arc<ProxyTable>,
    /// Woken when a worker reaches `max_requests`.
    pub limit_reached: Arc<Notify>,
    /// Per-worker `NOTIFY_SOCKET`s live here (when enabled).
    pub notify_dir: Option<NotifyDir>,
    /// Set when the cluster stops accepting (shutdown began).
    pub stop_accepting: watch::Sender<bool>,
    /// Notified whenever a worker changes state or exits.
    pub changed: Notify,
    pub finished: watch::Sender<Option<Shutdown>>,
    /// One rolling reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// Kills every worker's process group if the primary dies (`None` if it could not start).
    pub keeper: Option<Keeper>,
    /// Notify messages dropped because they did not come from the worker's process group.
    pub notify_rejected: std::sync::atomic::AtomicU64,
    /// When the cluster started.
    pub started: std::time::Instant,
    /// Rolling reloads that finished, and that failed.
    pub reloads_ok: std::sync::atomic::AtomicU64,
    pub reloads_failed: std::sync::atomic::AtomicU64,
    /// Upgrades: one at a time, the program to start again, the handover.
    pub upgrades: crate::primary::ops::upgrade::Upgrades,
    /// Recent worker output, for `forkline logs`.
    pub output: crate::primary::lifecycle::output_buffer::OutputBuffer,
}

impl Core {
    /// A core with no worker yet.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        opts: ClusterOptions,
        expect_protocol: bool,
        listeners: ListenerTable,
        prebound: Vec<Arc<BoundListener>>,
        notify_dir: Option<NotifyDir>,
    ) -> Core {
        let events = EventBus::default();
        let initial = events.subscribe();
        Core {
            dispatcher: Arc::new(Dispatcher::new(opts.balance, opts.credit_window)),
            proxy: Arc::new(ProxyTable::new(opts.proxy_queue_timeout)),
            limit_reached: Arc::new(Notify::new()),
            notify_dir,
            expect_protocol,
            events,
            initial_events: Mutex::new(Some(initial)),
            state: Mutex::new(State {
                slots: Slots::new(opts.workers, opts.restart, opts.backoff),
                live: BTreeMap::new(),
                next_seq: 0,
            }),
            listeners,
            prebound,
            stop_accepting: watch::channel(false).0,
            changed: Notify::new(),
            finished: watch::channel(None).0,
            reload_lock: tokio::sync::Mutex::new(()),
            keeper: start_keeper(),
            notify_rejected: std::sync::atomic::AtomicU64::new(0),
            started: std::time::Instant::now(),
            reloads_ok: std::sync::atomic::AtomicU64::new(0),
            reloads_failed: std::sync::atomic::AtomicU64::new(0),
            output: crate::primary::lifecycle::output_buffer::OutputBuffer::new(opts.output_buffer),
            upgrades: crate::primary::ops::upgrade::Upgrades::new(),
            opts,
        }
    }

    /// Waits until `done` holds, checked now and after every worker change, or until
    /// `deadline`; true when it holds.
    pub async fn wait_until(&self, deadline: std::time::Instant, done: impl Fn() -> bool) -> bool {
        loop {
            // Created before the check, so a change between the check and the wait is seen.
            let changed = self.changed.notified();
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

    /// The slot state and live workers, locked. Hold it briefly; never across an `await`.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Starts the keeper, registered so the orphan reaper leaves it to the `Keeper`. Without one
/// the cluster still runs; only what workers start could outlive a killed primary.
fn start_keeper() -> Option<Keeper> {
    let registry = crate::primary::lifecycle::reaper::registry();
    let mut registered = registry.lock();
    match Keeper::start() {
        Ok(keeper) => {
            registered.insert(keeper.pid());
            Some(keeper)
        }
        Err(error) => {
            tracing::warn!(%error, "could not start the keeper: processes a worker starts may outlive a killed primary");
            None
        }
    }
}
