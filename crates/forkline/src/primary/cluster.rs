//! `Cluster`: the primary's public handle, a thin front over the private core. Each operation
//! asks the slot state machine (`slots`) what to do, through `supervisor`, `replace` and
//! `shutdown`, which apply its decisions.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::primary::builder::ClusterBuilder;
use crate::primary::core::Core;
use crate::primary::event::{Event, EventStream, Replacement};
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::lifecycle::notify::NotifyDir;
use crate::primary::lifecycle::supervisor::{self, Start};
use crate::primary::options::ClusterOptions;
use crate::primary::traffic::listeners::{BindOptions, ListenKey, ListenerTable};
use crate::primary::{
    lifecycle::replace, lifecycle::shutdown, ops::signals, task, traffic::dispatch, traffic::proxy,
};
use crate::protocol::Mode;

/// Binds `address` for `/metrics`, `/healthz` and `/readyz` (or adopts the socket an upgrade
/// handed over). Without the `axum` feature a metrics address is refused before this
/// (`check_metrics_feature`).
async fn bind_metrics(
    address: &str,
    inherited: Option<OwnedFd>,
) -> Result<tokio::net::TcpListener> {
    let listen_error = |source| Error::Listen {
        address: address.to_string(),
        source,
    };
    let listener = match inherited {
        Some(fd) => {
            let listener = std::net::TcpListener::from(fd);
            listener.set_nonblocking(true).map_err(listen_error)?;
            tokio::net::TcpListener::from_std(listener).map_err(listen_error)?
        }
        None => tokio::net::TcpListener::bind(address)
            .await
            .map_err(listen_error)?,
    };
    Ok(listener)
}

#[cfg(feature = "axum")]
fn serve_metrics(cluster: &Cluster, address: &str, listener: tokio::net::TcpListener) {
    if let Ok(copy) = crate::sys::dup_cloexec(std::os::fd::AsFd::as_fd(&listener)) {
        cluster.inner.upgrades.keep_metrics(copy);
    }
    // The address as bound: the real port when 0 was asked for.
    let bound = listener.local_addr().map(|a| a.to_string());
    let address = bound.as_deref().unwrap_or(address);
    tracing::info!(%address, "metrics at /metrics, probes at /healthz and /readyz");
    crate::primary::ops::metrics::serve(cluster.clone(), listener);
}

#[cfg(not(feature = "axum"))]
fn serve_metrics(_: &Cluster, _: &str, _: tokio::net::TcpListener) {}

#[cfg(not(feature = "axum"))]
fn check_metrics_feature(opts: &ClusterOptions) -> Result<()> {
    match opts.metrics {
        Some(_) => Err(Error::InvalidOption {
            field: "metrics",
            reason: "forkline was built without its `axum` feature".into(),
        }),
        None => Ok(()),
    }
}

#[cfg(feature = "axum")]
fn check_metrics_feature(_: &ClusterOptions) -> Result<()> {
    Ok(())
}

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
    /// When the next restart is due, if one is scheduled.
    #[serde(skip)]
    pub restart_at: Option<Instant>,
    /// Connections handed to the current worker (round-robin/proxy).
    pub connections: u64,
}

/// The primary's handle to a running cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    pub(crate) inner: Arc<Core>,
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

    pub(crate) async fn start(mut opts: ClusterOptions, expect_protocol: bool) -> Result<Cluster> {
        check_metrics_feature(&opts)?;
        // Started by an upgrade: the old primary's sockets are ours to serve.
        let mut successor = crate::primary::ops::upgrade::Successor::take();
        if let Some(successor) = successor.as_mut() {
            if opts.inherited.is_empty() {
                let listeners = std::mem::take(&mut successor.listeners);
                opts.inherited = listeners.into_iter().map(Arc::new).collect();
            }
        }
        let listeners = ListenerTable::new(BindOptions {
            nodelay: opts.tcp_nodelay,
            unix_mode: opts.unix_mode,
            unix_owner: opts.unix_owner,
            migration: opts.reuseport_migration,
            balance: opts.balance,
        });
        let mut prebound = Vec::new();
        for (index, spec) in opts.listeners.iter().enumerate() {
            let key = ListenKey {
                kind: spec.kind,
                address: spec.address.clone(),
                mode: opts.mode,
                index: 0,
            };
            let listener = match opts.inherited.get(index) {
                Some(fd) => listeners.adopt(key, fd.try_clone()?)?,
                None => listeners.get_or_bind(key)?.0,
            };
            listener.pin();
            prebound.push(listener);
        }
        // Bound before anything starts: a clash is a start error naming the path.
        let handed_control = successor.as_mut().and_then(|s| s.control.take());
        let control = match (&opts.control, handed_control) {
            (Some(path), Some(fd)) => Some(crate::primary::ops::control::adopt(path, fd)?),
            (Some(path), None) => Some(crate::primary::ops::control::bind(path)?),
            (None, _) => None,
        };
        let metrics = match &opts.metrics {
            Some(address) => {
                let handed = successor.as_mut().and_then(|s| s.metrics.take());
                Some((address.clone(), bind_metrics(address, handed).await?))
            }
            None => None,
        };
        let notify_dir = if opts.notify_socket {
            Some(NotifyDir::create(Some((opts.uid, opts.gid)))?)
        } else {
            None
        };
        let core = Core::new(opts, expect_protocol, listeners, prebound, notify_dir);
        let cluster = Cluster {
            inner: Arc::new(core),
        };
        let opts = &cluster.inner.opts;
        if opts.mode == Mode::Steer {
            crate::primary::traffic::steer::probe_at_start(&cluster);
        }
        if opts.subreaper {
            crate::primary::lifecycle::reaper::become_subreaper()?;
        }
        if crate::primary::lifecycle::reaper::needed() {
            task::spawn(
                "reaper",
                crate::primary::lifecycle::reaper::run(
                    crate::primary::lifecycle::reaper::registry(),
                ),
            );
        }
        if opts.handle_signals {
            signals::handle(cluster.clone())?;
        }
        // What serves the outside: at once, or, started by an upgrade, once this primary's
        // workers are ready and the old primary has stopped accepting.
        let serving = cluster.clone();
        let serve = move || {
            if let Some(listener) = control {
                crate::primary::ops::control::serve(serving.clone(), listener);
            }
            if let Some((address, listener)) = metrics {
                serve_metrics(&serving, &address, listener);
            }
            for listener in &serving.inner.prebound {
                match serving.inner.opts.mode {
                    Mode::RoundRobin => dispatch::start_accepting(&serving, listener),
                    Mode::Proxy => proxy::start_accepting(&serving, listener),
                    Mode::Shared | Mode::Reuseport | Mode::Steer => {}
                }
            }
        };
        match successor {
            Some(successor) => {
                crate::primary::ops::upgrade::take_over_when_ready(&cluster, successor, serve)
            }
            None => serve(),
        }
        dispatch::start_reclaiming(&cluster);
        if opts.mode == Mode::Proxy {
            proxy::start_stopped_checks(&cluster);
        }
        if opts.max_requests.is_some() || opts.max_memory.is_some() {
            task::spawn(
                "recycle",
                crate::primary::lifecycle::recycle::watch(cluster.clone()),
            );
        }
        for slot in 0..opts.workers {
            supervisor::start_worker(&cluster, Start::Slot(slot))?;
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
            .expect("the sender lives in the core");
        done.clone().expect("checked by wait_for")
    }

    /// Starts a new worker in the lowest free slot (Node's `cluster.fork()`). The handle is
    /// usable at once: messages sent now are delivered after the worker's handshake, and a
    /// `disconnect` or `kill` takes effect as soon as the process exists.
    pub fn fork(&self) -> Result<WorkerHandle> {
        supervisor::start_worker(self, Start::Fork)
    }

    /// Every worker whose process has not exited (replacements on trial included), ordered by
    /// slot.
    pub fn workers(&self) -> Vec<WorkerHandle> {
        let mut all: Vec<WorkerHandle> = self.inner.state().live.values().cloned().collect();
        all.sort_by_key(|w| (w.id(), w.unique_id()));
        all
    }

    /// The current worker of slot `id`, while it runs.
    pub fn worker(&self, id: usize) -> Option<WorkerHandle> {
        let state = self.inner.state();
        state.worker(state.slots.current(id))
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
        let state = self.inner.state();
        state
            .slots
            .all()
            .map(|(id, slot)| {
                let current = state.worker(slot.current);
                SlotStatus {
                    id,
                    // 0 until the process exists: no pid yet.
                    pid: current.as_ref().map(|w| w.pid()).filter(|pid| *pid != 0),
                    state: current.as_ref().map(|w| w.state()),
                    replacement_pid: state
                        .worker(slot.candidate)
                        .map(|w| w.pid())
                        .filter(|pid| *pid != 0),
                    restarts: slot.restarts,
                    failures: slot.failures,
                    crash_loop: slot.crash_loop,
                    gave_up: slot.gave_up,
                    restart_at: slot.restart.map(|r| r.at),
                    connections: current.map_or(0, |w| w.connections_accepted()),
                }
            })
            .collect()
    }

    /// The number of slots the cluster keeps.
    pub fn target(&self) -> usize {
        self.inner.state().slots.target()
    }

    /// True when as many workers as the cluster keeps are ready and no restart is due: what a
    /// service manager's "ready" means (systemd's `READY=1`, an upgrade's hand-over).
    pub fn all_ready(&self) -> bool {
        let slots = self.status();
        let ready = slots
            .iter()
            .filter(|s| s.state == Some(WorkerState::Ready))
            .count();
        ready >= self.target() && slots.iter().all(|s| s.restart_at.is_none())
    }

    /// How many messages on workers' notify sockets were dropped because they did not come
    /// from the worker's own process group (another local user or process trying to mark a
    /// worker ready, stopping or alive).
    pub fn notify_messages_rejected(&self) -> u64 {
        self.inner
            .notify_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the connections queued on a closing reuseport socket are kept (see
    /// [`Migration`](crate::Migration)): `"bpf"` (a BPF program attached to each reuseport group),
    /// `"sysctl"` (`net.ipv4.tcp_migrate_req` is 1) — with both they move to another worker —
    /// or `"off"` (they are reset). `None` until the cluster has bound a reuseport TCP socket
    /// (not reuseport mode).
    pub fn reuseport_migration(&self) -> Option<&'static str> {
        self.inner.listeners.migration()
    }

    /// How steer mode steers (see [`Mode::Steer`]): `"bpf-round-robin"` or `"bpf-least-conn"`
    /// (a BPF program picks each new connection's worker in the kernel), or, where BPF was
    /// refused,
    /// `"fallback-round-robin"` (library workers: the primary accepts and hands connections
    /// out) or `"fallback-reuseport"` (each worker accepts on its own socket, the kernel
    /// hashes). `None` outside steer mode.
    pub fn steering(&self) -> Option<&'static str> {
        crate::primary::traffic::steer::status(self)
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
        crate::primary::traffic::steer::check_workers(
            self.inner.opts.mode,
            self.inner.opts.balance,
            workers,
        )?;
        supervisor::rescale(self, workers)
    }

    /// Rolling reload: slot by slot, start a replacement beside the current worker, wait until
    /// it is ready (bounded by the ready timeout) and has stayed up for the settle time, then
    /// stop the old worker gracefully. If a replacement exits or is not ready in time, it is
    /// stopped (never restarted), the old worker keeps serving, the reload stops, and the error
    /// ([`Error::ReloadFailed`]) and an [`Event::ReplaceFailed`] name the slot and the reason.
    /// One reload at a time: a second call waits for the first.
    pub async fn reload(&self) -> Result<()> {
        let _one_at_a_time = self.inner.reload_lock.lock().await;
        let slots: Vec<usize> = {
            let state = self.inner.state();
            if state.slots.is_stopping() {
                return Err(Error::ShutDown);
            }
            state.slots.all().map(|(id, _)| id).collect()
        };
        tracing::info!(slots = slots.len(), "rolling reload started");
        self.inner.events.emit(Event::ReloadStarted);
        use std::sync::atomic::Ordering::Relaxed;
        for slot in slots {
            if let Err(reason) = replace::replace(self, slot, Replacement::Reload, None).await {
                self.inner.reloads_failed.fetch_add(1, Relaxed);
                self.inner.events.emit(Event::ReloadFinished { ok: false });
                return Err(Error::ReloadFailed { slot, reason });
            }
        }
        self.inner.reloads_ok.fetch_add(1, Relaxed);
        tracing::info!("rolling reload finished");
        self.inner.events.emit(Event::ReloadFinished { ok: true });
        Ok(())
    }

    /// Begins a graceful shutdown (what SIGTERM/SIGINT do): stop accepting, ask every worker to
    /// finish, SIGKILL what is left after the graceful timeout. Returns at once;
    /// [`wait`](Self::wait) tells when it is done.
    pub fn shutdown(&self) {
        shutdown::begin(self, self.inner.opts.graceful_timeout);
    }

    /// Stops at once (what SIGQUIT does): workers get SIGKILL.
    pub fn shutdown_now(&self) {
        shutdown::begin(self, std::time::Duration::ZERO);
    }

    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.state().slots.is_stopping()
    }
}
