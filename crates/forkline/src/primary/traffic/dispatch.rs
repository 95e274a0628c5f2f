//! Round-robin mode: the primary accepts connections and hands each fd to a worker over its IPC
//! channel.
//!
//! Unlike Node, a worker may hold up to `credit_window` unacknowledged handoffs (acks come in
//! batches), and a connection handed to a worker that dies before taking it is re-dispatched to
//! another worker, never left hanging: the primary keeps a copy of the *worker's* end of the IPC
//! socket, so when the worker dies the packets it never read are still there, and the primary
//! reads them back and hands their fds to other workers. The primary closes its copy of each
//! connection fd as soon as it is sent, so the worker's close is the last one and the TCP
//! teardown costs the worker, not the primary — as when a worker accepts by itself.
//!
//! The dispatcher counts what it does for monitoring (`Cluster::stats`, `/metrics`) as plain
//! integers under the lock it takes anyway, once per batch: connections accepted, handed off
//! and re-dispatched, and a histogram of the time from accept to the worker's ack, observed once
//! per ack. The accept path reads the clock once per batch of accepts, to stamp it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};

use crate::primary::cluster::Cluster;
use crate::primary::handle::WorkerHandle;
use crate::primary::ops::stats::{AcceptErrorKind, LatencyHistogram, Traffic};
use crate::primary::options::{sticky_index, Balance};
use crate::primary::traffic::coalesce::{CoalesceGate, Coalescer};
use crate::primary::traffic::listeners::BoundListener;
use crate::protocol::channel::{encode, AsyncChannel};
use crate::protocol::ToWorker;
use crate::sys::MAX_FDS_PER_PACKET;

/// Connections accepted per wake-up before they are handed out in one batch.
const ACCEPT_BATCH: usize = 64;

/// An accepted connection waiting for (or travelling to) a worker.
#[derive(Debug)]
struct Conn {
    listener: u64,
    fd: OwnedFd,
    peer: Option<SocketAddr>,
    /// When its batch was accepted (or, for one taken back from a worker, when it was taken
    /// back): where its handoff latency starts.
    accepted: Instant,
}

/// A `conns` packet sent to a worker and not acknowledged yet: its seqs `first..end`, and when
/// its last connection was accepted.
#[derive(Debug, Clone, Copy)]
struct Sent {
    first: u64,
    end: u64,
    accepted: Instant,
}

/// A worker that takes handoffs.
struct Target {
    handle: WorkerHandle,
    channel: Arc<AsyncChannel>,
    /// Listener ids this worker listens on.
    listeners: Vec<u64>,
    /// Connections handed off and not yet acknowledged: the credit in use.
    inflight: usize,
    /// Open connections the worker last reported (least-conn).
    open: u64,
    /// The socket buffer was full on the last send; skipped until the next ack.
    full: bool,
    /// When it last acked (or was added).
    last_ack: Instant,
    /// Its handoffs sat unread past the handoff timeout and were taken back: it gets one
    /// connection (a probe) per handoff timeout until it reads again.
    stuck: bool,
    /// A probe was handed to it while stuck.
    probed: bool,
    /// While stuck, no probe before this.
    probe_after: Instant,
    /// Packets sent and not acknowledged yet, oldest first (for the handoff latency).
    sent: VecDeque<Sent>,
}

impl Target {
    fn load(&self) -> u64 {
        self.open + self.inflight as u64
    }

    /// A stuck worker takes nothing but a probe, once per handoff timeout.
    fn probe_pending(&self) -> bool {
        self.stuck && (self.probed || Instant::now() < self.probe_after)
    }
}

/// A worker acked up to seq `last` at `now`: drops the packets of `sent` before the one
/// holding `last`, and observes that one's latency (once: it is dropped too when `last` is its
/// last seq). Acks come in batches, and the last connection of a batch is the one whose arrival
/// made the worker ack, so its latency is the handoff's own (the others' would include the wait
/// for the rest of the batch).
fn observe_ack(sent: &mut VecDeque<Sent>, last: u64, now: Instant, latency: &mut LatencyHistogram) {
    while sent.front().is_some_and(|s| s.end <= last) {
        sent.pop_front();
    }
    if let Some(packet) = sent.front().copied() {
        if packet.first <= last {
            latency.observe(now.saturating_duration_since(packet.accepted));
            if last + 1 == packet.end {
                sent.pop_front();
            }
        }
    }
}

/// What the dispatcher counts (see `Traffic`).
#[derive(Debug, Default)]
struct Counters {
    accepted: u64,
    handed_off: u64,
    redispatched: u64,
    latency: LatencyHistogram,
}

#[derive(Default)]
struct State {
    /// Keyed by the worker's unique id.
    targets: BTreeMap<u64, Target>,
    pending: VecDeque<Conn>,
    cursor: usize,
    next_seq: u64,
    counters: Counters,
}

/// Hands accepted connections to workers. Shared by the accept loops and the IPC readers.
pub(crate) struct Dispatcher {
    state: Mutex<State>,
    changed: Notify,
    balance: Balance,
    window: usize,
    /// Failed accepts by `AcceptErrorKind` (rare: counted where they happen).
    accept_errors: [AtomicU64; AcceptErrorKind::ALL.len()],
    /// Whether each accept loop coalesces now, by listener id (see `coalesce`).
    coalescing: Mutex<BTreeMap<u64, Arc<AtomicBool>>>,
}

impl Dispatcher {
    /// A dispatcher with a balancing strategy and a per-worker credit window.
    pub fn new(balance: Balance, window: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            balance,
            window: window.max(1),
            accept_errors: Default::default(),
            coalescing: Mutex::default(),
        }
    }

    /// The counters as they are now, and what each worker has in flight.
    pub fn traffic(&self) -> Traffic {
        let state = self.state.lock().unwrap();
        let mut traffic = Traffic {
            accepted: state.counters.accepted,
            handed_off: state.counters.handed_off,
            redispatched: state.counters.redispatched,
            latency: state.counters.latency.clone(),
            in_flight: state
                .targets
                .iter()
                .map(|(key, t)| (*key, t.inflight as u64))
                .collect(),
            ..Traffic::default()
        };
        drop(state);
        for (count, total) in self.accept_errors.iter().zip(&mut traffic.accept_errors) {
            *total = count.load(Ordering::Relaxed);
        }
        traffic.coalescing = self
            .coalescing
            .lock()
            .unwrap()
            .iter()
            .map(|(listener, on)| (*listener, on.load(Ordering::Relaxed)))
            .collect();
        traffic
    }

    /// Starts handing `listener`'s connections to `worker`.
    pub fn add_target(&self, worker: &WorkerHandle, channel: &Arc<AsyncChannel>, listener: u64) {
        let mut state = self.state.lock().unwrap();
        let target = state
            .targets
            .entry(worker.unique_id())
            .or_insert_with(|| Target {
                handle: worker.clone(),
                channel: channel.clone(),
                listeners: Vec::new(),
                inflight: 0,
                open: 0,
                full: false,
                last_ack: Instant::now(),
                stuck: false,
                probed: false,
                probe_after: Instant::now(),
                sent: VecDeque::with_capacity(self.window),
            });
        if !target.listeners.contains(&listener) {
            target.listeners.push(listener);
        }
        self.flush(&mut state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// Stops handing new connections to `worker` (it is draining); what it holds unacknowledged
    /// stays with it until it acks or goes away. Handoffs are sent under the same lock, so once
    /// this returns none to `worker` is under way: a packet sent to it afterwards (its
    /// `disconnect`) follows every handoff it will get.
    pub fn stop_new(&self, worker: &WorkerHandle) {
        let mut state = self.state.lock().unwrap();
        if let Some(target) = state.targets.get_mut(&worker.unique_id()) {
            target.listeners.clear();
        }
    }

    /// The worker process has exited. `leftover` is the primary's copy of the worker's end of
    /// the IPC socket: the connections in packets it never read are re-dispatched.
    pub fn remove_target(&self, worker: &WorkerHandle, leftover: Option<&OwnedFd>) {
        let orphans = leftover.map(unread_connections).unwrap_or_default();
        if !orphans.is_empty() {
            tracing::info!(
                worker = worker.id(),
                pid = worker.pid(),
                count = orphans.len(),
                "re-dispatching connections the worker never took"
            );
        }
        worker.count_taken_back(orphans.len() as u64);
        let mut state = self.state.lock().unwrap();
        state.targets.remove(&worker.unique_id());
        state.counters.redispatched += orphans.len() as u64;
        for conn in orphans.into_iter().rev() {
            state.pending.push_front(conn);
        }
        self.flush(&mut state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// The worker now owns `seqs`; `open` is its reported open-connection count.
    pub fn ack(&self, worker: &WorkerHandle, seqs: &[u64], open: Option<u64>) {
        let now = Instant::now();
        let mut guard = self.state.lock().unwrap();
        let state = &mut *guard;
        if let Some(target) = state.targets.get_mut(&worker.unique_id()) {
            target.inflight = target.inflight.saturating_sub(seqs.len());
            if let Some(open) = open {
                target.open = open;
            }
            if let Some(last) = seqs.iter().max() {
                observe_ack(&mut target.sent, *last, now, &mut state.counters.latency);
            }
            target.full = false;
            target.last_ack = now;
            target.stuck = false;
            target.probed = false;
        }
        if !state.pending.is_empty() {
            self.flush(state);
        }
        drop(guard);
        self.changed.notify_waiters();
    }

    /// Wakes the accept loops: a worker may take connections now (a replacement committed).
    pub fn wake(&self) {
        let mut state = self.state.lock().unwrap();
        if !state.pending.is_empty() {
            self.flush(&mut state);
        }
        drop(state);
        self.changed.notify_waiters();
    }

    /// `worker` does not serve `listener` any more and gave back `count` handed-off
    /// connections: they count as acknowledged, go to other workers first, and the worker gets
    /// no more connections of that listener. An error (the worker is lying: more than it holds,
    /// a listener it was never given, fds that are not connections) leaves everything as it was.
    pub fn give_back(
        &self,
        worker: &WorkerHandle,
        listener: u64,
        count: usize,
        fds: Vec<OwnedFd>,
    ) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        let Some(target) = state.targets.get_mut(&worker.unique_id()) else {
            return Err("returned connections it was never handed".into());
        };
        if count > target.inflight {
            return Err(format!(
                "returned {count} connections but holds {} unacknowledged",
                target.inflight
            ));
        }
        if let Some(bad) = fds.iter().position(|fd| !is_connection(fd)) {
            return Err(format!("returned fd {bad} is not a stream socket"));
        }
        tracing::debug!(
            worker = worker.id(),
            count,
            "a worker gave connections back; handing them to others"
        );
        target.inflight -= count;
        target.listeners.retain(|l| *l != listener);
        worker.count_taken_back(count as u64);
        state.counters.redispatched += fds.len() as u64;
        let now = Instant::now();
        for fd in fds.into_iter().rev() {
            // Asked of the kernel (given-back connections are few): the next worker, and
            // ip-hash, see the client's address as for any other connection.
            let peer = socket2::SockRef::from(&fd)
                .peer_addr()
                .ok()
                .and_then(|a| a.as_socket());
            state.pending.push_front(Conn {
                listener,
                fd,
                peer,
                accepted: now,
            });
        }
        self.flush(&mut state);
        drop(state);
        self.changed.notify_waiters();
        Ok(())
    }

    /// Takes back the handoffs that have sat unread for `deadline` in the socket of a worker
    /// that stopped reading (SIGSTOP, a hung event loop) and hands them to other workers; that
    /// worker then gets one connection at a time until it reads again. Handoffs it read but has
    /// not acked yet (acks come in batches) are its own and stay. Returns how many came back.
    pub fn reclaim_stuck(&self, deadline: Duration) -> usize {
        let mut state = self.state.lock().unwrap();
        let mut reclaimed = Vec::new();
        for target in state.targets.values_mut() {
            let Some(worker_end) = target.handle.shared.worker_end.get() else {
                continue;
            };
            if target.stuck && target.probed && !has_unread(worker_end) {
                // It read its probe: it is serving again.
                target.stuck = false;
                target.probed = false;
                continue;
            }
            if target.inflight == 0 || target.last_ack.elapsed() < deadline {
                continue;
            }
            let (taken, stray) = take_unread_connections(worker_end);
            if let Some((packet, fds)) = stray {
                // Only a packet that raced past the peek: it goes to the worker again, after
                // what followed it, rather than being lost.
                let raw: Vec<RawFd> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
                let sent = target.channel.try_send(&packet, &raw);
                tracing::warn!(
                    worker = target.handle.id(),
                    resent = sent.is_ok(),
                    "a packet for a stuck worker was taken back by mistake"
                );
            }
            if taken.is_empty() {
                continue;
            }
            tracing::warn!(
                worker = target.handle.id(),
                pid = target.handle.pid(),
                count = taken.len(),
                "worker read no handoff for {deadline:?}; its connections go to other workers"
            );
            target.inflight = target.inflight.saturating_sub(taken.len());
            target.handle.count_taken_back(taken.len() as u64);
            // Those packets are gone: their stamps would only be dropped by later acks.
            target.sent.clear();
            target.stuck = true;
            target.probed = false;
            target.last_ack = Instant::now();
            // What was taken back goes elsewhere; a probe may follow a timeout later.
            target.probe_after = Instant::now() + deadline;
            reclaimed.extend(taken);
        }
        let count = reclaimed.len();
        state.counters.redispatched += count as u64;
        for conn in reclaimed.into_iter().rev() {
            state.pending.push_front(conn);
        }
        // Also when nothing came back: connections may wait for a stuck worker's probe time,
        // which passes without any ack or accept to flush them.
        let waiting = !state.pending.is_empty();
        if waiting {
            self.flush(&mut state);
        }
        drop(state);
        if waiting {
            self.changed.notify_waiters();
        }
        count
    }

    /// Records a worker's open-connection report.
    pub fn report_load(&self, worker: &WorkerHandle, open: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(target) = state.targets.get_mut(&worker.unique_id()) {
            target.open = open;
        }
    }

    /// `listener` was released: nothing more is routed for it, and its connections still
    /// waiting for a worker are closed.
    pub fn forget_listener(&self, listener: u64) {
        let mut state = self.state.lock().unwrap();
        state.pending.retain(|conn| conn.listener != listener);
        for target in state.targets.values_mut() {
            target.listeners.retain(|l| *l != listener);
        }
    }

    /// True while connections wait for a worker to take them.
    pub fn has_pending(&self) -> bool {
        !self.state.lock().unwrap().pending.is_empty()
    }

    /// Drops connections still waiting for a worker (shutdown): their clients see the close.
    pub fn drop_pending(&self) {
        self.state.lock().unwrap().pending.clear();
    }

    /// Hands out `conns`; what no worker can take now waits in `pending`.
    fn dispatch(&self, conns: Vec<Conn>) {
        let mut state = self.state.lock().unwrap();
        state.counters.accepted += conns.len() as u64;
        state.pending.extend(conns);
        self.flush(&mut state);
    }

    /// True when a new connection for `listener` could be handed out now.
    fn has_room(&self, listener: u64) -> bool {
        let state = self.state.lock().unwrap();
        state.pending.is_empty()
            && state.targets.values().any(|t| {
                !t.full
                    && !t.probe_pending()
                    && t.inflight < self.window
                    && t.listeners.contains(&listener)
                    && t.handle.takes_connections()
            })
    }

    /// Sends as much of `pending` as workers can take, one packet per worker.
    fn flush(&self, state: &mut State) {
        let mut rounds = 0;
        while !state.pending.is_empty() && rounds < 8 {
            rounds += 1;
            let mut batches: BTreeMap<u64, Vec<Conn>> = BTreeMap::new();
            let mut waiting = VecDeque::new();
            let mut planned: HashMap<u64, usize> = HashMap::new();
            while let Some(conn) = state.pending.pop_front() {
                match self.pick(state, &conn, &planned) {
                    Some(key) => {
                        *planned.entry(key).or_default() += 1;
                        batches.entry(key).or_default().push(conn);
                    }
                    None => waiting.push_back(conn),
                }
            }
            state.pending = waiting;
            if batches.is_empty() {
                return;
            }
            for (key, conns) in batches {
                let returned = self.send_batch(state, key, conns);
                state.pending.extend(returned);
            }
        }
    }

    /// Chooses the worker for `conn` among those with room, by the balancing strategy. Runs once
    /// per connection, so it allocates only for ip-hash.
    fn pick(&self, state: &mut State, conn: &Conn, planned: &HashMap<u64, usize>) -> Option<u64> {
        let window = self.window;
        let serves = |t: &Target| t.listeners.contains(&conn.listener);
        let has_room = |key: &u64, t: &Target| {
            let planned = planned.get(key).copied().unwrap_or(0);
            !t.full
                && serves(t)
                && t.inflight + planned < window
                && !(t.probe_pending() || (t.stuck && planned > 0))
                && t.handle.takes_connections()
        };
        match self.balance {
            Balance::RoundRobin => {
                let n = state.targets.iter().filter(|(k, t)| has_room(k, t)).count();
                if n == 0 {
                    return None;
                }
                state.cursor = state.cursor.wrapping_add(1);
                let nth = state.cursor % n;
                state
                    .targets
                    .iter()
                    .filter(|(k, t)| has_room(k, t))
                    .nth(nth)
                    .map(|(k, _)| *k)
            }
            Balance::LeastConn => state
                .targets
                .iter()
                .filter(|(k, t)| has_room(k, t))
                .min_by_key(|(k, t)| {
                    let planned = planned.get(*k).copied().unwrap_or(0) as u64;
                    (t.load() + planned, t.handle.connections_accepted())
                })
                .map(|(k, _)| *k),
            Balance::IpHash => {
                // Hash over every worker of the listener (not just those with room), ordered by
                // slot, so a client keeps its worker while the set of workers is stable.
                let mut all: Vec<(usize, u64)> = state
                    .targets
                    .iter()
                    .filter(|(_, t)| serves(t))
                    .map(|(key, t)| (t.handle.id(), *key))
                    .collect();
                all.sort();
                let start = sticky_index(conn.peer.map(|p| p.ip()), all.len());
                (0..all.len())
                    .map(|i| all[(start + i) % all.len()].1)
                    .find(|key| has_room(key, &state.targets[key]))
            }
        }
    }

    /// Sends one `conns` packet per listener to the worker `key`. Returns the connections that
    /// could not be sent (buffer full or worker gone) so they can go elsewhere.
    fn send_batch(&self, state: &mut State, key: u64, conns: Vec<Conn>) -> Vec<Conn> {
        let mut by_listener: BTreeMap<u64, Vec<Conn>> = BTreeMap::new();
        for conn in conns {
            by_listener.entry(conn.listener).or_default().push(conn);
        }
        let mut returned = Vec::new();
        for (listener, group) in by_listener {
            for chunk in chunked(group, MAX_FDS_PER_PACKET) {
                if returned.is_empty() {
                    if let Err(back) = self.send_chunk(state, key, listener, chunk) {
                        returned.extend(back);
                    }
                } else {
                    returned.extend(chunk);
                }
            }
        }
        returned
    }

    fn send_chunk(
        &self,
        state: &mut State,
        key: u64,
        listener: u64,
        chunk: Vec<Conn>,
    ) -> Result<(), Vec<Conn>> {
        let first = state.next_seq;
        let seqs: Vec<u64> = (first..first + chunk.len() as u64).collect();
        let peers = peer_list(&chunk);
        let packet = encode(&ToWorker::Conns {
            listener,
            seqs,
            peers,
        })
        .expect("a conns packet always fits");
        let fds: Vec<RawFd> = chunk.iter().map(|c| c.fd.as_raw_fd()).collect();
        let accepted = chunk.last().map(|c| c.accepted);
        let Some(target) = state.targets.get_mut(&key) else {
            return Err(chunk);
        };
        match target.channel.try_send(&packet, &fds) {
            Ok(()) => {
                if target.stuck {
                    target.probed = true;
                }
                target.handle.count_connections(chunk.len() as u64);
                // The fds are in the worker's socket now; dropping `chunk` closes our copies.
                target.inflight += fds.len();
                let end = first + fds.len() as u64;
                if let Some(accepted) = accepted {
                    // Packets given back are dropped from the front only by a later ack: a
                    // worker that stopped acking must not grow this without bound.
                    if target.sent.len() >= 2 * self.window {
                        target.sent.pop_front();
                    }
                    target.sent.push_back(Sent {
                        first,
                        end,
                        accepted,
                    });
                }
                state.next_seq = end;
                state.counters.handed_off += fds.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                target.full = true;
                Err(chunk)
            }
            // Too many fds in flight for this user (more than RLIMIT_NOFILE queued in sockets):
            // they wait for the next ack, which frees some.
            Err(e) if e.raw_os_error() == Some(libc::ETOOMANYREFS) => Err(chunk),
            Err(e) => {
                tracing::debug!(worker = target.handle.id(), error = %e, "handoff failed");
                target.listeners.clear();
                Err(chunk)
            }
        }
    }

    /// Accepts on `listener`'s socket until `stop` fires, handing connections out in batches.
    /// Stops accepting (leaving connections in the kernel backlog) while no worker has room.
    ///
    /// With a `coalesce` window, a wake-up that found two connections or more is followed by a
    /// timer wait instead of a socket wait, as long as the governor finds that it pays, or
    /// `always` (see `coalesce`).
    pub async fn accept_loop(
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
pub(crate) fn start_accepting(cluster: &Cluster, listener: &BoundListener) {
    if let Some(socket) = listener.socket.clone() {
        let dispatcher = cluster.inner.dispatcher.clone();
        let stop = stop_signal(cluster, listener);
        let id = listener.id;
        let coalesce = cluster.inner.opts.accept_coalesce;
        let always = cluster.inner.opts.accept_coalesce_always;
        // Decided once, when the listener starts accepting, from the workers kept then.
        let threads = cluster
            .inner
            .opts
            .accept_threads
            .unwrap_or_else(|| crate::primary::options::auto_accept_threads(cluster.target()));
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
pub(crate) fn stop_signal(cluster: &Cluster, listener: &BoundListener) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let mut cluster_stop = cluster.inner.stop_accepting.subscribe();
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
pub(crate) fn start_reclaiming(cluster: &Cluster) {
    let dispatcher = cluster.inner.dispatcher.clone();
    let deadline = cluster.inner.opts.handoff_timeout;
    let mut stop = cluster.inner.stop_accepting.subscribe();
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

/// True when a packet is queued in the worker's end of its socket.
fn has_unread(worker_end: &OwnedFd) -> bool {
    use std::os::fd::AsFd;
    let mut byte = [0u8; 1];
    crate::sys::peek_packet(worker_end.as_fd(), &mut byte).is_ok()
}

/// Takes the `conns` packets at the head of a live worker's queue (stopping at the first other
/// packet, a message or a reply, which the worker must still read).
fn take_unread_connections(worker_end: &OwnedFd) -> (Vec<Conn>, Option<Stray>) {
    use std::os::fd::AsFd;
    let mut taken = Vec::new();
    let mut buf = vec![0u8; crate::protocol::MAX_PACKET + 1];
    while let Ok(n) = crate::sys::peek_packet(worker_end.as_fd(), &mut buf) {
        if !is_conns(&buf[..n]) {
            break;
        }
        // The worker may have taken it meanwhile: then this takes the next packet, whatever it
        // is, so look again at what was taken.
        let mut fds = Vec::new();
        let Ok((n, _)) = crate::sys::recv_packet(worker_end.as_fd(), &mut buf, &mut fds, true)
        else {
            break;
        };
        if !is_conns(&buf[..n]) {
            // Not a handoff after all (the worker read the one peeked): it cannot be put back
            // in place, so the caller sends it again.
            return (taken, Some((buf[..n].to_vec(), fds)));
        }
        taken.extend(conns_in(&buf[..n], fds).unwrap_or_default());
    }
    (taken, None)
}

/// A packet for a worker taken off its queue by mistake, with its fds: to be sent again.
type Stray = (Vec<u8>, Vec<OwnedFd>);

/// True for a `conns` packet.
fn is_conns(packet: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<ToWorker>(packet),
        Ok(ToWorker::Conns { .. })
    )
}

/// The connections a `conns` packet carries (`None` for any other packet). At the fd limit
/// only the first fds arrive: those are the connections.
fn conns_in(packet: &[u8], fds: Vec<OwnedFd>) -> Option<Vec<Conn>> {
    let Ok(ToWorker::Conns {
        listener, peers, ..
    }) = serde_json::from_slice::<ToWorker>(packet)
    else {
        return None;
    };
    let mut peers = peers.iter().map(|p| p.parse().ok());
    let now = Instant::now();
    Some(
        fds.into_iter()
            .map(|fd| Conn {
                listener,
                fd,
                peer: peers.next().flatten(),
                accepted: now,
            })
            .collect(),
    )
}

/// Reads back the `conns` packets a dead worker never read from its end of the IPC socket.
fn unread_connections(worker_end: &OwnedFd) -> Vec<Conn> {
    use std::os::fd::AsFd;
    let mut orphans = Vec::new();
    let mut buf = vec![0u8; crate::protocol::MAX_PACKET + 1];
    loop {
        let mut fds = Vec::new();
        match crate::sys::recv_packet(worker_end.as_fd(), &mut buf, &mut fds, true) {
            Ok((0, _)) | Err(_) => break,
            // At the fd limit only the first fds arrive: those are re-dispatched.
            Ok((n, _)) => orphans.extend(conns_in(&buf[..n], fds).unwrap_or_default()),
        }
    }
    orphans
}

/// True for a stream socket (what a handed-off connection is; its client may have gone since),
/// not a pipe, a file or a datagram socket.
fn is_connection(fd: &OwnedFd) -> bool {
    socket2::SockRef::from(fd)
        .r#type()
        .is_ok_and(|t| t == socket2::Type::STREAM)
}

/// Accepts one connection; `None` when none is waiting.
///
/// Connections are accepted non-blocking (most workers run an event loop; the blocking worker
/// API switches them back).
fn accept(socket: &OwnedFd) -> io::Result<Option<(OwnedFd, Option<SocketAddr>)>> {
    let sock = socket2::SockRef::from(socket);
    loop {
        match sock.accept4(libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK) {
            Ok((conn, addr)) => {
                let peer = addr.as_socket();
                return Ok(Some((conn.into(), peer)));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    socket2::SockRef::from(fd).set_nonblocking(true)
}

fn chunked(items: Vec<Conn>, size: usize) -> Vec<Vec<Conn>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    for item in items {
        current.push(item);
        if current.len() == size {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// The `peers` of a `conns` packet: one entry per connection, in order (`""` where the
/// address is unknown), or none at all when no address is known (Unix sockets).
fn peer_list(chunk: &[Conn]) -> Vec<String> {
    if chunk.iter().all(|c| c.peer.is_none()) {
        return Vec::new();
    }
    chunk
        .iter()
        .map(|c| c.peer.map(|p| p.to_string()).unwrap_or_default())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_back_stops_at_the_first_packet_that_is_not_a_handoff() {
        use std::os::fd::AsFd;
        let (primary_end, worker_end) = crate::sys::seqpacket_pair().unwrap();
        let send = |msg: &ToWorker, fds: &[RawFd]| {
            crate::sys::send_packet(primary_end.as_fd(), &encode(msg).unwrap(), fds, false).unwrap()
        };
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let conns = ToWorker::Conns {
            listener: 7,
            seqs: vec![0, 1],
            peers: vec!["127.0.0.1:1".into(), String::new()],
        };
        send(&conns, &[a.as_raw_fd(), b.as_raw_fd()]);
        send(&ToWorker::Disconnect, &[]);
        let (taken, stray) = take_unread_connections(&worker_end);
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[0].peer, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(taken[1].peer, None);
        assert!(taken.iter().all(|c| c.listener == 7));
        assert!(stray.is_none());
        // The `disconnect` stays for the worker.
        let mut buf = vec![0u8; 1024];
        let mut fds = Vec::new();
        let (n, _) = crate::sys::recv_packet(worker_end.as_fd(), &mut buf, &mut fds, true).unwrap();
        assert_eq!(
            serde_json::from_slice::<ToWorker>(&buf[..n]).unwrap(),
            ToWorker::Disconnect
        );
    }

    #[test]
    fn peers_stay_in_step_with_the_fds() {
        let conn = |peer: Option<&str>| Conn {
            listener: 1,
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            peer: peer.map(|p| p.parse().unwrap()),
            accepted: Instant::now(),
        };
        let mixed = [
            conn(Some("127.0.0.1:1000")),
            conn(None),
            conn(Some("[::1]:2000")),
        ];
        assert_eq!(
            peer_list(&mixed),
            vec![
                "127.0.0.1:1000".to_string(),
                String::new(),
                "[::1]:2000".into()
            ]
        );
        assert!(peer_list(&[conn(None), conn(None)]).is_empty());
    }

    #[test]
    fn an_ack_observes_the_packet_of_its_last_seq_once() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let packet = |first, end, at| Sent {
            first,
            end,
            accepted: t0 + at,
        };
        let mut sent = VecDeque::from([
            packet(0, 1, ms(0)),
            packet(1, 3, ms(1)),
            packet(3, 4, ms(2)),
        ]);
        let mut latency = LatencyHistogram::default();
        // Acks seqs 0..=2: packet 0 is done unobserved, packet 1..3 gives the sample.
        observe_ack(&mut sent, 2, t0 + ms(11), &mut latency);
        assert_eq!(latency.count, 1);
        assert!((latency.sum - 0.010).abs() < 1e-9, "{}", latency.sum);
        assert_eq!(sent.len(), 1);
        // An ack of a seq already observed observes nothing.
        observe_ack(&mut sent, 2, t0 + ms(20), &mut latency);
        assert_eq!(latency.count, 1);
        observe_ack(&mut sent, 3, t0 + ms(22), &mut latency);
        assert_eq!(latency.count, 2);
        assert!(sent.is_empty());
    }
}
