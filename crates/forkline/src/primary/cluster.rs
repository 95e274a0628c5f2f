//! `Cluster`: the primary's public handle, a thin front over the private core (`core.rs`).
//! Each operation is one call into the room that owns it: supervision and scaling
//! (`lifecycle::supervisor`), reloads (`lifecycle::reload`), shutdown, stats, upgrades.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde::Serialize;

use crate::control::{MigrationStatus, SlotStatus, Status, Steering};
use crate::error::Result;
use crate::primary::builder::ClusterBuilder;
use crate::primary::core::Core;
use crate::primary::event::{Event, EventStream};
use crate::primary::handle::WorkerHandle;
use crate::primary::lifecycle::output_buffer::OutputLine;
use crate::primary::lifecycle::supervisor::{self, Start};
use crate::primary::lifecycle::{reload, shutdown};
use crate::primary::ops::{stats, upgrade};
use crate::primary::options::ClusterOptions;
use crate::primary::status::{Shutdown, SlotView};
use crate::primary::traffic::steering;

/// The primary's handle to a running cluster. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    core: Arc<Core>,
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
        let core = crate::primary::start::start(opts, expect_protocol).await?;
        Ok(Cluster { core })
    }

    /// The settings the cluster runs with.
    pub fn options(&self) -> &ClusterOptions {
        self.core.opts()
    }

    /// The event stream. The first call gets every event since start; later calls get events
    /// from then on.
    pub fn events(&self) -> EventStream {
        self.core.event_stream()
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
        let mut rx = self.core.finished().subscribe();
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
        supervisor::start_worker(&self.core, Start::Fork)
    }

    /// Every worker whose process has not exited (replacements on trial included), ordered by
    /// slot.
    pub fn workers(&self) -> Vec<WorkerHandle> {
        self.core.workers()
    }

    /// The current worker of `slot`, while it runs.
    pub fn worker(&self, slot: usize) -> Option<WorkerHandle> {
        self.core.worker(slot)
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

    /// Supervision state of every slot: who runs it, restarts and failures, connections handed
    /// to it. Reads no `/proc` (memory and CPU stay `None`; [`stats`](Self::stats) has them).
    pub fn status(&self) -> Vec<SlotStatus> {
        self.core.slots().iter().map(SlotView::status).collect()
    }

    /// True while a restart is booked for some slot (a worker died and its slot restarts after
    /// a backoff delay).
    pub fn restarts_pending(&self) -> bool {
        self.core.slots().iter().any(|s| s.restart_at.is_some())
    }

    /// The number of slots the cluster keeps.
    pub fn target(&self) -> usize {
        self.core.target()
    }

    /// True when as many workers as the cluster keeps are ready and no restart is due: what a
    /// service manager's "ready" means (systemd's `READY=1`, an upgrade's hand-over).
    pub fn all_ready(&self) -> bool {
        self.core.all_ready()
    }

    /// How many messages on workers' notify sockets were dropped because they did not come
    /// from the worker's own process group (another local user or process trying to mark a
    /// worker ready, stopping or alive).
    pub fn notify_messages_rejected(&self) -> u64 {
        self.core
            .counters()
            .notify_rejected
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How the connections queued on a closing reuseport socket are kept (see
    /// [`Migration`](crate::Migration)): `Bpf` (a BPF program attached to each reuseport group),
    /// `Sysctl` (`net.ipv4.tcp_migrate_req` is 1) — with both they move to another worker — or
    /// `Off` (they are reset). `None` until the cluster has bound a reuseport TCP socket
    /// (not reuseport mode).
    pub fn reuseport_migration(&self) -> Option<MigrationStatus> {
        self.core.listeners().migration()
    }

    /// How steer mode steers (see [`Mode::Steer`](crate::Mode::Steer)): `BpfRoundRobin` or
    /// `BpfLeastConn` (a BPF program picks each new connection's worker in the kernel), or,
    /// where BPF was refused, `FallbackRoundRobin` (library workers: the primary accepts and
    /// hands connections out) or `FallbackReuseport` (each worker accepts on its own socket,
    /// the kernel hashes). In proxy mode, `ProxyKernel` (new connections go straight to the
    /// workers' own listeners) or `ProxyRelay` (the primary relays them). `None` in other
    /// modes.
    pub fn steering(&self) -> Option<Steering> {
        steering::status(&self.core)
    }

    /// The addresses the cluster listens on.
    pub fn listen_addresses(&self) -> Vec<String> {
        self.core.listen_addresses()
    }

    /// Changes the number of workers: starts new slots, or stops the highest ones gracefully.
    pub fn scale(&self, workers: usize) -> Result<()> {
        supervisor::scale(&self.core, workers)
    }

    /// Rolling reload: slot by slot, start a replacement beside the current worker, wait until
    /// it is ready (bounded by the ready timeout) and has stayed up for the settle time, then
    /// stop the old worker gracefully. If a replacement exits or is not ready in time, it is
    /// stopped (never restarted), the old worker keeps serving, the reload stops, and the error
    /// ([`Error::ReloadFailed`](crate::Error::ReloadFailed)) and an
    /// [`Event::ReplaceFailed`] name the slot and the reason. One reload at a time: a second
    /// call waits for the first.
    pub async fn reload(&self) -> Result<()> {
        reload::reload(&self.core).await
    }

    /// Begins a graceful shutdown (what SIGTERM/SIGINT do): stop accepting, ask every worker to
    /// finish, SIGKILL what is left after the graceful timeout. Returns at once;
    /// [`wait`](Self::wait) tells when it is done.
    pub fn shutdown(&self) {
        shutdown::graceful(&self.core);
    }

    /// Stops at once (what SIGQUIT does): workers get SIGKILL.
    pub fn shutdown_now(&self) {
        shutdown::now(&self.core);
    }

    /// True once shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        self.core.is_stopping()
    }

    /// Rolling reloads so far: (finished, failed).
    pub fn reload_counts(&self) -> (u64, u64) {
        self.core.reload_counts()
    }

    /// True while a rolling reload is in progress.
    pub fn is_reloading(&self) -> bool {
        self.core.is_reloading()
    }

    /// A snapshot of the cluster and each slot's worker.
    pub fn stats(&self) -> Status {
        stats::snapshot(&self.core, &self.core.traffic())
    }

    /// The last `max` lines of worker output the primary copied (of `slot` only, if given),
    /// oldest first. Empty unless workers' output goes through the primary
    /// (`WorkerStdio::Prefixed` or `Captured`).
    pub fn recent_output(&self, max: usize, slot: Option<usize>) -> Vec<OutputLine> {
        let (recent, _) = self.core.output().recent_and_follow(max, slot);
        recent.iter().map(|line| OutputLine::clone(line)).collect()
    }

    /// The listening sockets bound up front (or passed by the service manager), each with its
    /// `LISTEN_FDNAMES` name: what a new primary (`upgrade`) or a service manager's fd store
    /// needs to serve the same ports. In reuseport mode, one socket of each group.
    pub fn listening_sockets(&self) -> Vec<(String, Arc<OwnedFd>)> {
        upgrade::listening_sockets(&self.core)
    }

    /// Replaces this primary with a new one started from the same program file and arguments
    /// (what SIGUSR2 and `forkline upgrade` do). The new primary gets the listening sockets,
    /// starts its own workers and, once they are all ready, takes over; this one then stops
    /// accepting, drains its workers gracefully and stops (`Cluster::wait` returns). Returns
    /// the new primary's pid.
    ///
    /// If the new primary exits, or is not ready within `upgrade_timeout`, it is stopped and
    /// this one carries on: `Error::UpgradeFailed` says why. One upgrade at a time; refused
    /// as PID 1 (a container's init cannot hand over: roll the container instead).
    pub async fn upgrade(&self) -> Result<u32> {
        upgrade::upgrade(&self.core).await
    }
}
