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

use tokio::sync::Notify;

use super::conn::Conn;
use super::sink::{Handoff, Sink};
use super::unread::{has_unread, take_unread_connections, unread_connections};
use crate::primary::handle::WorkerHandle;
use crate::primary::options::{sticky_index, Balance};
use crate::primary::traffic::counters::{AcceptErrorKind, LatencyHistogram, Traffic};
use crate::protocol::channel::encode;
use crate::protocol::ToWorker;
use crate::sys::MAX_FDS_PER_PACKET;

/// Connections accepted per wake-up before they are handed out in one batch.
pub(super) const ACCEPT_BATCH: usize = 64;

/// A `conns` packet sent to a worker and not acknowledged yet: its seqs `first..end`, and when
/// its last connection was accepted.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sent {
    pub(super) first: u64,
    pub(super) end: u64,
    pub(super) accepted: Instant,
}

/// A worker that takes handoffs.
pub(super) struct Target {
    pub(super) handle: WorkerHandle,
    pub(super) sink: Sink,
    /// How many connections it may hold unacknowledged (see `Sink::window`).
    pub(super) window: usize,
    /// Listener ids this worker listens on.
    pub(super) listeners: Vec<u64>,
    /// Connections handed off and not yet acknowledged: the credit in use.
    pub(super) inflight: usize,
    /// Open connections the worker last reported (least-conn).
    pub(super) open: u64,
    /// The socket buffer was full on the last send; skipped until the next ack.
    pub(super) full: bool,
    /// When it last acked (or was added).
    pub(super) last_ack: Instant,
    /// Its handoffs sat unread past the handoff timeout and were taken back: it gets one
    /// connection (a probe) per handoff timeout until it reads again.
    pub(super) stuck: bool,
    /// A probe was handed to it while stuck.
    pub(super) probed: bool,
    /// While stuck, no probe before this.
    pub(super) probe_after: Instant,
    /// Packets sent and not acknowledged yet, oldest first (for the handoff latency).
    pub(super) sent: VecDeque<Sent>,
}

impl Target {
    pub(super) fn load(&self) -> u64 {
        self.open + self.inflight as u64
    }

    /// A stuck worker takes nothing but a probe, once per handoff timeout.
    pub(super) fn probe_pending(&self) -> bool {
        self.stuck && (self.probed || Instant::now() < self.probe_after)
    }
}

/// A worker acked up to seq `last` at `now`: drops the packets of `sent` before the one
/// holding `last`, and observes that one's latency (once: it is dropped too when `last` is its
/// last seq). Acks come in batches, and the last connection of a batch is the one whose arrival
/// made the worker ack, so its latency is the handoff's own (the others' would include the wait
/// for the rest of the batch).
pub(super) fn observe_ack(
    sent: &mut VecDeque<Sent>,
    last: u64,
    now: Instant,
    latency: &mut LatencyHistogram,
) {
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
pub(super) struct Counters {
    pub(super) accepted: u64,
    pub(super) handed_off: u64,
    pub(super) redispatched: u64,
    pub(super) latency: LatencyHistogram,
}

#[derive(Default)]
pub(super) struct State {
    /// Keyed by the worker's unique id.
    pub(super) targets: BTreeMap<u64, Target>,
    pub(super) pending: VecDeque<Conn>,
    pub(super) cursor: usize,
    pub(super) next_seq: u64,
    pub(super) counters: Counters,
}

/// Hands accepted connections to workers. Shared by the accept loops and the IPC readers.
pub(crate) struct Dispatcher {
    pub(super) state: Mutex<State>,
    pub(super) changed: Notify,
    pub(super) balance: Balance,
    pub(super) window: usize,
    /// Failed accepts by `AcceptErrorKind` (rare: counted where they happen).
    pub(super) accept_errors: [AtomicU64; AcceptErrorKind::ALL.len()],
    /// Whether each accept loop coalesces now, by listener id (see `coalesce`).
    pub(super) coalescing: Mutex<BTreeMap<u64, Arc<AtomicBool>>>,
}

impl Dispatcher {
    /// A dispatcher with a balancing strategy and a per-worker credit window.
    pub(crate) fn new(balance: Balance, window: usize) -> Self {
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
    pub(crate) fn traffic(&self) -> Traffic {
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

    /// Starts handing `listener`'s connections to `worker`, through `sink`.
    pub(crate) fn add_target(&self, worker: &WorkerHandle, sink: Sink, listener: u64) {
        let mut state = self.state.lock().unwrap();
        let target = state
            .targets
            .entry(worker.unique_id())
            .or_insert_with(|| Target {
                handle: worker.clone(),
                window: sink.window(self.window),
                sink,
                listeners: Vec::new(),
                inflight: 0,
                open: 0,
                full: false,
                last_ack: Instant::now(),
                stuck: false,
                probed: false,
                probe_after: Instant::now(),
                sent: VecDeque::new(),
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
    pub(crate) fn stop_new(&self, worker: &WorkerHandle) {
        let mut state = self.state.lock().unwrap();
        if let Some(target) = state.targets.get_mut(&worker.unique_id()) {
            target.listeners.clear();
        }
    }

    /// The worker process has exited. `leftover` is the primary's copy of the worker's end of
    /// the IPC socket: the connections in packets it never read are re-dispatched.
    pub(crate) fn remove_target(&self, worker: &WorkerHandle, leftover: Option<&OwnedFd>) {
        let orphans = leftover.map(unread_connections).unwrap_or_default();
        self.take_back(worker, || orphans);
    }

    /// `worker` is gone (or its Node channel closed): its target goes, and the connections
    /// `held` gives go to other workers first. `held` is called under the lock every handoff
    /// is sent under, after the target went, so for a Node worker's channel task it finds every
    /// connection sent to the task (sent and not `accepted`, or not sent yet: the primary keeps
    /// its copy of each until the worker answers) and none can follow.
    pub(crate) fn take_back(&self, worker: &WorkerHandle, held: impl FnOnce() -> Vec<Conn>) {
        let mut state = self.state.lock().unwrap();
        state.targets.remove(&worker.unique_id());
        let conns = held();
        if !conns.is_empty() {
            tracing::info!(
                worker = worker.id(),
                pid = worker.pid(),
                count = conns.len(),
                "re-dispatching connections the worker never took"
            );
            worker.count_taken_back(conns.len() as u64);
            state.counters.redispatched += conns.len() as u64;
            for conn in conns.into_iter().rev() {
                state.pending.push_front(conn);
            }
        }
        self.flush(&mut state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// A Node worker answered `accepted: false` for `conn`: it goes to another worker (with its
    /// server open, its `maxConnections`, not back to this one) — unless another worker refused
    /// it so before, or no other worker serves its listener, when it is closed (its client sees
    /// the close, as with one Node process at its `maxConnections`) rather than passed around.
    pub(crate) fn not_accepted(&self, worker: &WorkerHandle, mut conn: Conn, server_open: bool) {
        let me = worker.unique_id();
        let mut state = self.state.lock().unwrap();
        if let Some(target) = state.targets.get_mut(&me) {
            target.inflight = target.inflight.saturating_sub(1);
            target.last_ack = Instant::now();
        }
        let elsewhere = state
            .targets
            .iter()
            .any(|(key, t)| *key != me && t.listeners.contains(&conn.listener));
        let refused_twice = conn.refused_by.is_some_and(|by| by != me);
        if !(server_open && (refused_twice || !elsewhere)) {
            if server_open {
                conn.refused_by = Some(me);
            }
            worker.count_taken_back(1);
            state.counters.redispatched += 1;
            state.pending.push_front(conn);
        }
        self.flush(&mut state);
        drop(state);
        self.changed.notify_waiters();
    }

    /// `worker` closed its server of `listener`: it gets no more of its connections.
    pub(crate) fn leave(&self, worker: &WorkerHandle, listener: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(target) = state.targets.get_mut(&worker.unique_id()) {
            target.listeners.retain(|l| *l != listener);
        }
    }

    /// The worker now owns `seqs`; `open` is its reported open-connection count.
    pub(crate) fn ack(&self, worker: &WorkerHandle, seqs: &[u64], open: Option<u64>) {
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
    pub(crate) fn wake(&self) {
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
    pub(crate) fn give_back(
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
                refused_by: None,
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
    pub(crate) fn reclaim_stuck(&self, deadline: Duration) -> usize {
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
                let Sink::Forkline(channel) = &target.sink else {
                    continue;
                };
                let sent = channel.try_send(&packet, &raw);
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
    pub(crate) fn report_load(&self, worker: &WorkerHandle, open: u64) {
        let mut state = self.state.lock().unwrap();
        if let Some(target) = state.targets.get_mut(&worker.unique_id()) {
            target.open = open;
        }
    }

    /// `listener` was released: nothing more is routed for it, and its connections still
    /// waiting for a worker are closed.
    pub(crate) fn forget_listener(&self, listener: u64) {
        let mut state = self.state.lock().unwrap();
        state.pending.retain(|conn| conn.listener != listener);
        for target in state.targets.values_mut() {
            target.listeners.retain(|l| *l != listener);
        }
    }

    /// True while connections wait for a worker to take them.
    pub(crate) fn has_pending(&self) -> bool {
        !self.state.lock().unwrap().pending.is_empty()
    }

    /// Drops connections still waiting for a worker (shutdown): their clients see the close.
    pub(crate) fn drop_pending(&self) {
        self.state.lock().unwrap().pending.clear();
    }

    /// Hands out `conns`; what no worker can take now waits in `pending`.
    pub(super) fn dispatch(&self, conns: Vec<Conn>) {
        let mut state = self.state.lock().unwrap();
        state.counters.accepted += conns.len() as u64;
        state.pending.extend(conns);
        self.flush(&mut state);
    }

    /// True when a new connection for `listener` could be handed out now.
    pub(super) fn has_room(&self, listener: u64) -> bool {
        let state = self.state.lock().unwrap();
        state.pending.is_empty()
            && state.targets.values().any(|t| {
                !t.full
                    && !t.probe_pending()
                    && t.inflight < t.window
                    && t.listeners.contains(&listener)
                    && t.handle.takes_connections()
            })
    }

    /// Sends as much of `pending` as workers can take, one packet per worker.
    pub(super) fn flush(&self, state: &mut State) {
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
    pub(super) fn pick(
        &self,
        state: &mut State,
        conn: &Conn,
        planned: &HashMap<u64, usize>,
    ) -> Option<u64> {
        let serves = |t: &Target| t.listeners.contains(&conn.listener);
        let has_room = |key: &u64, t: &Target| {
            let planned = planned.get(key).copied().unwrap_or(0);
            !t.full
                && serves(t)
                && conn.refused_by != Some(*key)
                && t.inflight + planned < t.window
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
    pub(super) fn send_batch(&self, state: &mut State, key: u64, conns: Vec<Conn>) -> Vec<Conn> {
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

    /// Sends `chunk` (connections of one listener) to the worker `key` as one `conns` packet,
    /// or as `newconn`s to a Node worker's channel task. What could not be sent comes back.
    pub(super) fn send_chunk(
        &self,
        state: &mut State,
        key: u64,
        listener: u64,
        chunk: Vec<Conn>,
    ) -> Result<(), Vec<Conn>> {
        let first = state.next_seq;
        let count = chunk.len();
        let accepted = chunk.last().map(|c| c.accepted);
        let Some(target) = state.targets.get_mut(&key) else {
            return Err(chunk);
        };
        if let Err((e, chunk)) = deliver(&target.sink, listener, first, chunk) {
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    target.full = true;
                    Err(chunk)
                }
                // Too many fds in flight for this user (more than RLIMIT_NOFILE queued in
                // sockets): they wait for the next ack, which frees some.
                Some(libc::ETOOMANYREFS) => Err(chunk),
                _ => {
                    tracing::debug!(worker = target.handle.id(), error = %e, "handoff failed");
                    target.listeners.clear();
                    Err(chunk)
                }
            };
        }
        if target.stuck {
            target.probed = true;
        }
        target.handle.count_connections(count as u64);
        target.inflight += count;
        let end = first + count as u64;
        if let Some(accepted) = accepted {
            // Packets given back are dropped from the front only by a later ack: a worker that
            // stopped acking must not grow this without bound.
            if target.sent.len() >= 2 * target.window {
                target.sent.pop_front();
            }
            target.sent.push_back(Sent {
                first,
                end,
                accepted,
            });
        }
        state.next_seq = end;
        state.counters.handed_off += count as u64;
        Ok(())
    }
}

/// Puts `chunk` on its way through `sink`, its seqs from `first`: one `conns` packet (the fds
/// are in the worker's socket then, and dropping `chunk` closes the primary's copies), or one
/// `Handoff` each to a Node worker's channel task (which keeps them until the worker answers).
/// On an error, nothing was sent and `chunk` comes back.
fn deliver(
    sink: &Sink,
    listener: u64,
    first: u64,
    chunk: Vec<Conn>,
) -> Result<(), (io::Error, Vec<Conn>)> {
    match sink {
        Sink::Forkline(channel) => {
            let packet = encode(&ToWorker::Conns {
                listener,
                seqs: (first..first + chunk.len() as u64).collect(),
                peers: peer_list(&chunk),
            })
            .expect("a conns packet always fits");
            let fds: Vec<RawFd> = chunk.iter().map(|c| c.fd.as_raw_fd()).collect();
            match channel.try_send(&packet, &fds) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    Err((io::Error::from_raw_os_error(libc::EAGAIN), chunk))
                }
                Err(e) => Err((e, chunk)),
            }
        }
        // The task's queue is closed only once the worker exited (and its target is removed
        // under the same lock right after): then nothing of `chunk` was taken.
        Sink::Node(task) if task.is_closed() => Err((io::ErrorKind::BrokenPipe.into(), chunk)),
        Sink::Node(task) => {
            for (seq, conn) in (first..).zip(chunk) {
                if let Err(lost) = task.send(Handoff { seq, conn }) {
                    // Closed between the check and now: the connection is closed with the
                    // handoff (its client sees it), as for a worker that died holding it.
                    tracing::debug!(seq = lost.0.seq, "node worker gone before its handoff");
                }
            }
            Ok(())
        }
    }
}

/// True for a stream socket (what a handed-off connection is; its client may have gone since),
/// not a pipe, a file or a datagram socket.
pub(super) fn is_connection(fd: &OwnedFd) -> bool {
    socket2::SockRef::from(fd)
        .r#type()
        .is_ok_and(|t| t == socket2::Type::STREAM)
}

/// Accepts one connection; `None` when none is waiting.
///
/// Connections are accepted non-blocking (most workers run an event loop; the blocking worker
/// API switches them back).
pub(super) fn accept(socket: &OwnedFd) -> io::Result<Option<(OwnedFd, Option<SocketAddr>)>> {
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

pub(super) fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    socket2::SockRef::from(fd).set_nonblocking(true)
}

pub(super) fn chunked(items: Vec<Conn>, size: usize) -> Vec<Vec<Conn>> {
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
pub(super) fn peer_list(chunk: &[Conn]) -> Vec<String> {
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
    pub(super) fn peers_stay_in_step_with_the_fds() {
        let conn = |peer: Option<&str>| Conn {
            listener: 1,
            fd: std::fs::File::open("/dev/null").unwrap().into(),
            peer: peer.map(|p| p.parse().unwrap()),
            accepted: Instant::now(),
            refused_by: None,
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
    pub(super) fn an_ack_observes_the_packet_of_its_last_seq_once() {
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
