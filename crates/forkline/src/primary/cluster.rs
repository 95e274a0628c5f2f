//! `Cluster`: the primary's handle. Owns the slots (stable worker ids), the registry of live
//! workers, and the cluster-wide operations: fork, scale, rolling reload and shutdown.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde::Serialize;
use tokio::sync::{watch, Notify};

use super::builder::ClusterBuilder;
use super::dispatch::Dispatcher;
use super::event::{Event, EventBus, EventStream};
use super::handle::{WorkerHandle, WorkerState};
use super::listeners::{BoundListener, ListenKey, ListenerTable};
use super::notify::NotifyDir;
use super::options::ClusterOptions;
use super::proxy::ProxyTable;
use super::supervisor;
use crate::error::{Error, Result};
use crate::protocol::Mode;

/// How the cluster ended.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Per-slot supervision state, visible through [`Cluster::status`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlotStatus {
    /// Slot id.
    pub id: usize,
    /// Pid of the slot's current worker, if one is running.
    pub pid: Option<u32>,
    /// State of the slot's current worker.
    pub state: Option<WorkerState>,
    /// Restarts so far.
    pub restarts: u64,
    /// Consecutive deaths soon after starting.
    pub failures: u32,
    /// True while the slot keeps dying young (`failures >= crash_loop_after`).
    pub crash_loop: bool,
    /// True when the slot reached `max_restarts` and is no longer restarted.
    pub gave_up: bool,
    /// When the next restart is due, if one is scheduled.
    #[serde(skip)]
    pub restart_at: Option<Instant>,
    /// Connections handed to the current worker (round-robin/proxy).
    pub connections: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Slot {
    pub current: Option<WorkerHandle>,
    pub restarts: u64,
    pub failures: u32,
    pub crash_loop: bool,
    pub gave_up: bool,
    pub restart_at: Option<Instant>,
}

#[derive(Debug, Default)]
pub(crate) struct ClusterState {
    pub slots: BTreeMap<usize, Slot>,
    /// Workers whose process has not exited yet, by unique id.
    pub live: BTreeMap<u64, WorkerHandle>,
    pub next_seq: u64,
    /// How many slots the cluster should have.
    pub target: usize,
    pub stopping: bool,
}

pub(crate) struct Inner {
    pub opts: ClusterOptions,
    pub expect_protocol: bool,
    pub events: EventBus,
    pub initial_events: Mutex<Option<EventStream>>,
    pub state: Mutex<ClusterState>,
    pub listeners: ListenerTable,
    /// Listeners bound up front, in `LISTEN_FDS` order.
    pub prebound: Vec<Arc<BoundListener>>,
    pub dispatcher: Arc<Dispatcher>,
    pub proxy: Arc<ProxyTable>,
    /// Woken when a worker reaches `max_requests`.
    pub limit_reached: Arc<Notify>,
    /// Per-worker `NOTIFY_SOCKET`s live here (when enabled).
    pub notify_dir: Option<NotifyDir>,
    pub stop_accepting: watch::Sender<bool>,
    /// Notified whenever a worker changes state or exits.
    pub changed: Notify,
    pub finished: watch::Sender<Option<Shutdown>>,
    pub reload_lock: tokio::sync::Mutex<()>,
}

/// The primary's handle to a running cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("workers", &self.workers().len())
            .finish()
    }
}

impl Cluster {
    /// A builder with the defaults (Node's `cluster.setupPrimary`).
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::new()
    }

    pub(crate) async fn start(opts: ClusterOptions, expect_protocol: bool) -> Result<Cluster> {
        let listeners = ListenerTable::new(opts.unix_mode);
        let mut prebound = Vec::new();
        for (index, spec) in opts.listeners.iter().enumerate() {
            let key = ListenKey {
                kind: spec.kind,
                address: spec.address.clone(),
                mode: opts.mode,
            };
            let listener = match opts.inherited.get(index) {
                Some(fd) => listeners.adopt(key, fd.try_clone()?)?,
                None => listeners.get_or_bind(key)?.0,
            };
            prebound.push(listener);
        }
        let notify_dir = if opts.notify_socket {
            Some(NotifyDir::create()?)
        } else {
            None
        };
        let events = EventBus::default();
        let initial = events.subscribe();
        let inner = Arc::new(Inner {
            dispatcher: Arc::new(Dispatcher::new(opts.balance, opts.credit_window)),
            proxy: Arc::new(ProxyTable::default()),
            limit_reached: Arc::new(Notify::new()),
            notify_dir,
            expect_protocol,
            events,
            initial_events: Mutex::new(Some(initial)),
            state: Mutex::new(ClusterState {
                target: opts.workers,
                ..ClusterState::default()
            }),
            listeners,
            prebound,
            stop_accepting: watch::channel(false).0,
            changed: Notify::new(),
            finished: watch::channel(None).0,
            reload_lock: tokio::sync::Mutex::new(()),
            opts,
        });
        let cluster = Cluster { inner };
        if cluster.inner.opts.handle_signals {
            supervisor::handle_signals(cluster.clone())?;
        }
        for listener in &cluster.inner.prebound {
            match cluster.inner.opts.mode {
                Mode::RoundRobin => supervisor::start_round_robin(&cluster, listener),
                Mode::Proxy => supervisor::start_proxy(&cluster, listener),
                Mode::Shared | Mode::Reuseport => {}
            }
        }
        if cluster.inner.opts.max_requests.is_some() || cluster.inner.opts.max_memory.is_some() {
            tokio::spawn(super::recycle::watch(cluster.clone()));
        }
        for slot in 0..cluster.inner.opts.workers {
            supervisor::start_worker(&cluster, slot)?;
        }
        Ok(cluster)
    }

    /// The settings the cluster runs with.
    pub fn options(&self) -> &ClusterOptions {
        &self.inner.opts
    }

    /// The event stream. The first call gets every event since start; later calls get events
    /// from then on.
    pub fn events(&self) -> EventStream {
        self.inner
            .initial_events
            .lock()
            .unwrap()
            .take()
            .unwrap_or_else(|| self.inner.events.subscribe())
    }

    /// Calls `handler` for every event until the cluster has shut down, then returns how it
    /// ended.
    pub async fn run<F>(&self, mut handler: F) -> Shutdown
    where
        F: FnMut(&Cluster, &Event),
    {
        let mut events = self.events();
        while let Some(event) = events.next().await {
            handler(self, &event);
        }
        self.wait().await
    }

    /// Waits until the cluster has shut down.
    pub async fn wait(&self) -> Shutdown {
        let mut rx = self.inner.finished.subscribe();
        let done = rx
            .wait_for(|f| f.is_some())
            .await
            .expect("the sender lives in Inner");
        done.clone().expect("checked by wait_for")
    }

    /// Starts a new worker in the lowest free slot (Node's `cluster.fork()`).
    pub fn fork(&self) -> Result<WorkerHandle> {
        let slot = {
            let state = self.inner.state.lock().unwrap();
            if state.stopping {
                return Err(Error::ShutDown);
            }
            (0..)
                .find(|id| {
                    state.slots.get(id).is_none_or(|s| {
                        s.current.as_ref().is_none_or(|w| w.is_dead()) && s.restart_at.is_none()
                    })
                })
                .expect("some slot id is free")
        };
        supervisor::start_worker(self, slot)
    }

    /// Every worker whose process has not exited, ordered by slot.
    pub fn workers(&self) -> Vec<WorkerHandle> {
        let state = self.inner.state.lock().unwrap();
        let mut all: Vec<WorkerHandle> = state.live.values().cloned().collect();
        all.sort_by_key(|w| (w.id(), w.unique_id()));
        all
    }

    /// The current worker of slot `id`.
    pub fn worker(&self, id: usize) -> Option<WorkerHandle> {
        let state = self.inner.state.lock().unwrap();
        state.slots.get(&id).and_then(|s| s.current.clone())
    }

    /// Sends `msg` to every connected worker.
    pub fn broadcast<T: Serialize>(&self, msg: &T) -> Result<()> {
        for worker in self.workers() {
            if worker.is_connected() {
                worker.send(msg)?;
            }
        }
        Ok(())
    }

    /// Supervision state of every slot.
    pub fn status(&self) -> Vec<SlotStatus> {
        let state = self.inner.state.lock().unwrap();
        state
            .slots
            .iter()
            .map(|(id, slot)| {
                let current = slot.current.as_ref().filter(|w| !w.is_dead());
                SlotStatus {
                    id: *id,
                    pid: current.map(|w| w.pid()),
                    state: current.map(|w| w.state()),
                    restarts: slot.restarts,
                    failures: slot.failures,
                    crash_loop: slot.crash_loop,
                    gave_up: slot.gave_up,
                    restart_at: slot.restart_at,
                    connections: current.map(|w| w.connections_accepted()).unwrap_or(0),
                }
            })
            .collect()
    }

    /// The addresses the cluster listens on.
    pub fn listen_addresses(&self) -> Vec<String> {
        let mut all: Vec<String> = self
            .inner
            .listeners
            .all()
            .iter()
            .map(|l| l.local.clone())
            .collect();
        all.sort();
        all
    }

    /// Changes the number of workers: starts new slots, or stops the highest ones gracefully.
    pub fn scale(&self, workers: usize) -> Result<()> {
        if workers == 0 {
            return Err(Error::InvalidOption {
                field: "workers",
                reason: "must be at least 1".into(),
            });
        }
        let (grow, shrink) = {
            let mut state = self.inner.state.lock().unwrap();
            if state.stopping {
                return Err(Error::ShutDown);
            }
            let old = state.target;
            state.target = workers;
            let grow: Vec<usize> = (old..workers).collect();
            let mut shrink = Vec::new();
            for id in workers..old.max(workers) {
                if let Some(mut slot) = state.slots.remove(&id) {
                    if let Some(worker) = slot.current.take() {
                        shrink.push(worker);
                    }
                }
            }
            (grow, shrink)
        };
        tracing::info!(workers, "scaling");
        for id in grow {
            supervisor::start_worker(self, id)?;
        }
        for worker in shrink {
            self.inner.dispatcher.stop_new(&worker);
            worker.disconnect();
            supervisor::release_slot_sockets(self, worker.id());
        }
        Ok(())
    }

    /// Rolling reload: slot by slot, start a replacement, wait until it is ready (bounded by
    /// the ready timeout), then gracefully stop the old worker. If a replacement never becomes
    /// ready, it is stopped, the old worker keeps serving, and the reload stops with an error.
    pub async fn reload(&self) -> Result<()> {
        let _one_at_a_time = self.inner.reload_lock.lock().await;
        let slots: Vec<usize> = {
            let state = self.inner.state.lock().unwrap();
            state.slots.keys().copied().collect()
        };
        tracing::info!(slots = slots.len(), "rolling reload started");
        for id in slots {
            let old = self.worker(id).filter(|w| !w.is_dead());
            let fresh = supervisor::start_worker(self, id)?;
            let deadline = Instant::now() + self.inner.opts.ready_timeout;
            if !self.wait_ready(&fresh, deadline).await {
                tracing::error!(
                    slot = id,
                    "reload failed: the replacement did not become ready; keeping the old worker"
                );
                fresh.disconnect();
                if let Some(old) = &old {
                    let mut state = self.inner.state.lock().unwrap();
                    if let Some(slot) = state.slots.get_mut(&id) {
                        slot.current = Some(old.clone());
                    }
                }
                return Err(Error::Protocol(format!(
                    "reload failed: the new worker for slot {id} did not become ready within {:?}",
                    self.inner.opts.ready_timeout
                )));
            }
            if let Some(old) = old {
                self.inner.dispatcher.stop_new(&old);
                self.inner
                    .proxy
                    .retire(&old, self.inner.opts.graceful_timeout)
                    .await;
                old.disconnect();
            }
        }
        tracing::info!("rolling reload finished");
        Ok(())
    }

    /// Waits until `worker` is ready; false if it died or `deadline` passed.
    pub(crate) async fn wait_ready(&self, worker: &WorkerHandle, deadline: Instant) -> bool {
        loop {
            let changed = self.inner.changed.notified();
            match worker.state() {
                WorkerState::Ready => return true,
                WorkerState::Exited | WorkerState::Draining => return false,
                _ => {}
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return worker.state() == WorkerState::Ready;
            }
        }
    }

    /// Begins a graceful shutdown (what SIGTERM/SIGINT do): stop accepting, ask every worker to
    /// finish, SIGKILL what is left after the graceful timeout. Returns at once; [`wait`]
    /// (Self::wait) tells when it is done.
    pub fn shutdown(&self) {
        self.begin_shutdown(self.inner.opts.graceful_timeout);
    }

    /// Stops at once (what SIGQUIT does): workers get SIGKILL.
    pub fn shutdown_now(&self) {
        self.begin_shutdown(Duration::ZERO);
    }

    fn begin_shutdown(&self, grace: Duration) {
        let workers = {
            let mut state = self.inner.state.lock().unwrap();
            if state.stopping {
                return;
            }
            state.stopping = true;
            state.live.values().cloned().collect::<Vec<_>>()
        };
        tracing::info!(workers = workers.len(), grace = ?grace, "shutting down");
        self.inner.stop_accepting.send_replace(true);
        for worker in &workers {
            self.inner.dispatcher.stop_new(worker);
            if grace.is_zero() {
                let _ = worker.kill(Signal::SIGKILL);
            } else {
                worker.disconnect();
            }
        }
        let cluster = self.clone();
        tokio::spawn(async move { cluster.finish_shutdown(grace).await });
    }

    async fn finish_shutdown(self, grace: Duration) {
        let deadline = Instant::now() + grace;
        let mut killed = Vec::new();
        if !self.wait_all_exited(deadline).await {
            for worker in self.workers() {
                tracing::warn!(
                    worker = worker.id(),
                    pid = worker.pid(),
                    "graceful timeout reached; sending SIGKILL"
                );
                killed.push(worker.id());
                let _ = worker.signal(Signal::SIGKILL);
            }
            self.wait_all_exited(Instant::now() + Duration::from_secs(10))
                .await;
        }
        self.inner.dispatcher.drop_pending();
        self.inner.listeners.close_all();
        killed.sort();
        let result = Shutdown {
            clean: killed.is_empty() && !grace.is_zero(),
            killed,
        };
        tracing::info!(clean = result.clean, "cluster stopped");
        self.inner.events.close();
        self.inner.finished.send_replace(Some(result));
    }

    async fn wait_all_exited(&self, deadline: Instant) -> bool {
        loop {
            let changed = self.inner.changed.notified();
            if self.inner.state.lock().unwrap().live.is_empty() {
                return true;
            }
            if tokio::time::timeout_at(deadline.into(), changed)
                .await
                .is_err()
            {
                return self.inner.state.lock().unwrap().live.is_empty();
            }
        }
    }

    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.state.lock().unwrap().stopping
    }
}
