//! One reuseport group's steering: its maps and program, which slots' sockets are in the
//! socket array (entering when a worker is ready, leaving when the slot has none), least-conn
//! counts, and the cluster-wide decision whether BPF can be loaded (`Steerer`).

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use crate::primary::options::Balance;
use crate::primary::traffic::migration::{
    refused_for_tests, BPF_PROG_TYPE_SK_REUSEPORT, BPF_SK_REUSEPORT_SELECT_OR_MIGRATE, LICENSE,
};
use crate::sys::{self, BpfMap, MappedWords, BPF_ANY, BPF_F_MMAPABLE};

use super::program::*;

/// One reuseport group's steering: its maps, its program, and which slots' sockets are in
/// the socket array.
#[derive(Debug)]
pub(crate) struct SteerGroup {
    /// The socket array (`REUSEPORT_SOCKARRAY`), `u32` index → socket.
    socks: BpfMap,
    /// The state (`ARRAY`, one entry): `n` and the round-robin counter.
    state: BpfMap,
    /// Least-conn: the open connections at each index, shared with the program (and the map,
    /// kept open while they are mapped).
    loads: Option<(BpfMap, MappedWords)>,
    /// The program, attached to each of the group's sockets once it listens.
    prog: OwnedFd,
    members: Mutex<Members>,
}

/// Who is in the socket array.
#[derive(Debug, Default)]
struct Members {
    /// The slot, and its socket, at each index `0..n` of the socket array. The socket is a
    /// copy of the listener's per-slot one, dropped as soon as the slot leaves (the listener's
    /// release of a slot must close the last copy).
    order: Vec<(usize, Arc<OwnedFd>)>,
    /// The ready workers (unique ids) of each slot: the slot is in the array while it has one.
    ready: HashMap<usize, HashSet<u64>>,
    /// Least-conn: the last report of each worker (unique id) of each slot. A slot's count is
    /// their sum: during a reload two workers share the slot's socket.
    reports: HashMap<usize, HashMap<u64, u32>>,
}

impl Members {
    /// The sum of the reports of `slot`'s workers (0 without any).
    fn reported(&self, slot: usize) -> u32 {
        self.reports
            .get(&slot)
            .map_or(0, |r| {
                r.values().fold(0u32, |sum, n| sum.saturating_add(*n))
            })
            .min(MAX_REPORTED)
    }

    /// The index of `slot` in the socket array.
    fn index_of(&self, slot: usize) -> Option<usize> {
        self.order.iter().position(|(s, _)| *s == slot)
    }
}

/// The most a count is set to from reports, far from `u32::MAX`: the program adds to it.
const MAX_REPORTED: u32 = 1 << 30;

/// Above this, every count has the smallest one taken off ([`SteerGroup::normalize`]): counts
/// only grow for workers that never report (plain programs), and a `u32` would wrap.
const NORMALIZE_ABOVE: u32 = 1 << 30;

/// How often a least-conn group looks whether its counts need [`SteerGroup::normalize`].
const NORMALIZE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

impl SteerGroup {
    /// Creates the maps and loads the program that balances by `balance` (round-robin, or
    /// least-conn; anything else is round-robin). Refused when `FORKLINE_TEST_NO_BPF` is set.
    pub(crate) fn new(balance: Balance) -> io::Result<SteerGroup> {
        refused_for_tests()?;
        let socks = BpfMap::create(
            BPF_MAP_TYPE_REUSEPORT_SOCKARRAY,
            4,
            8,
            MAX_SOCKETS,
            "forkline_socks",
        )?;
        let state = BpfMap::create(BPF_MAP_TYPE_ARRAY, 4, STATE_SIZE, 1, "forkline_state")?;
        let (insns, loads) = if balance == Balance::LeastConn {
            let loads = BpfMap::create_with_flags(
                BPF_MAP_TYPE_ARRAY,
                4,
                4 * LEAST_CONN_MAX_SOCKETS,
                1,
                BPF_F_MMAPABLE,
                "forkline_loads",
            )?;
            let words = loads.map_words(LEAST_CONN_MAX_SOCKETS as usize)?;
            let insns = least_conn_program(state.as_raw_fd(), loads.as_raw_fd(), socks.as_raw_fd());
            (insns, Some((loads, words)))
        } else {
            (program(state.as_raw_fd(), socks.as_raw_fd()), None)
        };
        let prog = sys::bpf_prog_load(
            BPF_PROG_TYPE_SK_REUSEPORT,
            BPF_SK_REUSEPORT_SELECT_OR_MIGRATE,
            &insns,
            LICENSE,
            "forkline_steer",
        )?;
        let group = SteerGroup {
            socks,
            state,
            loads,
            prog,
            members: Mutex::default(),
        };
        group.set_count(0)?;
        Ok(group)
    }

    /// Attaches the program to a socket of the group that has just started listening
    /// (attached before `listen`, the socket could not join the group).
    pub(crate) fn prepare(&self, socket: BorrowedFd<'_>) -> io::Result<()> {
        sys::attach_reuseport_prog(socket, self.prog.as_fd())
    }

    /// Worker `seq` of `slot`, whose socket is `socket`, is ready: the slot's socket enters the
    /// array if it is not there yet.
    pub(crate) fn worker_ready(
        &self,
        slot: usize,
        seq: u64,
        socket: &Arc<OwnedFd>,
    ) -> io::Result<()> {
        let mut members = self.members.lock().unwrap();
        members.ready.entry(slot).or_default().insert(seq);
        if members.order.iter().any(|(s, _)| *s == slot) {
            return Ok(());
        }
        self.enter(&mut members, slot, socket)
    }

    /// True while worker `seq` of `slot` is ready and the slot's socket is not in the array.
    fn waits(&self, slot: usize, seq: u64) -> bool {
        let members = self.members.lock().unwrap();
        members.ready.get(&slot).is_some_and(|r| r.contains(&seq))
            && !members.order.iter().any(|(s, _)| *s == slot)
    }

    /// Worker `seq` of `slot` exited: the slot's socket leaves the array if no other ready
    /// worker of the slot (a replacement) accepts on it; if one does, the slot's count is what
    /// the workers left have reported.
    pub(crate) fn worker_gone(&self, slot: usize, seq: u64) {
        let mut members = self.members.lock().unwrap();
        if let Some(reports) = members.reports.get_mut(&slot) {
            reports.remove(&seq);
        }
        let Some(ready) = members.ready.get_mut(&slot) else {
            return;
        };
        ready.remove(&seq);
        if ready.is_empty() {
            members.ready.remove(&slot);
            members.reports.remove(&slot);
            self.leave_logged(&mut members, slot);
        } else if let Some(at) = members.index_of(slot) {
            self.set_load(at, members.reported(slot));
        }
    }

    /// `slot`'s socket is released (no worker will accept on it): it leaves the array.
    pub(crate) fn slot_released(&self, slot: usize) {
        let mut members = self.members.lock().unwrap();
        members.ready.remove(&slot);
        members.reports.remove(&slot);
        self.leave_logged(&mut members, slot);
    }

    /// Least-conn: worker `seq` of `slot` reports `open` connections; the slot's count becomes
    /// the sum of its workers' reports (the program's own additions replaced: the worker has
    /// counted what it accepted, and what is still queued for it shows with its next report).
    /// Kept while the slot is out of the array too, for when it enters.
    pub(crate) fn report_load(&self, slot: usize, seq: u64, open: u64) {
        if self.loads.is_none() {
            return;
        }
        let mut members = self.members.lock().unwrap();
        let open = u32::try_from(open).unwrap_or(u32::MAX).min(MAX_REPORTED);
        members.reports.entry(slot).or_default().insert(seq, open);
        if let Some(at) = members.index_of(slot) {
            self.set_load(at, members.reported(slot));
        }
    }

    /// Least-conn: when every count is above [`NORMALIZE_ABOVE`], takes the smallest off each,
    /// so counts that only grow (workers that never report) do not wrap. The order between
    /// them, which is all the program looks at, stays.
    pub(crate) fn normalize(&self) {
        let Some((_, loads)) = &self.loads else {
            return;
        };
        let members = self.members.lock().unwrap();
        let n = members.order.len();
        let least = (0..n).map(|at| loads.load(at)).min().unwrap_or(0);
        if least > NORMALIZE_ABOVE {
            for at in 0..n {
                loads.subtract(at, least);
            }
        }
    }

    /// Whether the program balances by load (least-conn).
    pub(crate) fn by_load(&self) -> bool {
        self.loads.is_some()
    }

    /// Sets the count at `index` (least-conn).
    fn set_load(&self, index: usize, open: u32) {
        if let Some((_, loads)) = &self.loads {
            loads.store(index, open);
        }
    }

    /// The count at `index` (least-conn; 0 otherwise).
    fn load_at(&self, index: usize) -> u32 {
        self.loads
            .as_ref()
            .map_or(0, |(_, loads)| loads.load(index))
    }

    /// The slots in the array, by index.
    #[cfg(test)]
    pub(crate) fn slots(&self) -> Vec<usize> {
        let members = self.members.lock().unwrap();
        members.order.iter().map(|(slot, _)| *slot).collect()
    }

    fn enter(&self, members: &mut Members, slot: usize, socket: &Arc<OwnedFd>) -> io::Result<()> {
        let index = members.order.len() as u32;
        let most = if self.by_load() {
            LEAST_CONN_MAX_SOCKETS
        } else {
            MAX_SOCKETS
        };
        if index >= most {
            return Err(io::Error::other(format!(
                "more than {most} sockets to steer between"
            )));
        }
        let fd = socket.as_raw_fd() as u64;
        self.socks
            .update(&index.to_ne_bytes(), &fd.to_ne_bytes(), BPF_ANY)?;
        // What its workers have reported (none yet: 0), set before `n` brings the index
        // within reach.
        self.set_load(index as usize, members.reported(slot));
        members.order.push((slot, socket.clone()));
        self.set_count(index + 1)
    }

    fn leave_logged(&self, members: &mut Members, slot: usize) {
        if let Err(e) = self.leave(members, slot) {
            tracing::warn!(slot, error = %e, "steer: a worker's socket could not leave the map");
        }
    }

    /// Takes `slot` out of the array and moves the last socket into its index. In this order,
    /// so that the program never picks an index without a socket: `n` shrinks first (the last
    /// index is out of reach), the last index is emptied, and then the last socket takes the
    /// leaving one's index (a socket can be at one index only).
    fn leave(&self, members: &mut Members, slot: usize) -> io::Result<()> {
        let Some(at) = members.order.iter().position(|(s, _)| *s == slot) else {
            return Ok(());
        };
        let last = members.order.len() - 1;
        members.order.swap_remove(at);
        self.set_count(last as u32)?;
        match self.socks.delete(&(last as u32).to_ne_bytes()) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => return Err(e),
            _ => {}
        }
        if at != last {
            let fd = members.order[at].1.as_raw_fd() as u64;
            // The moving socket's count moves with it (before the socket: a connection steered
            // to it meanwhile is counted against the right load).
            self.set_load(at, self.load_at(last));
            self.socks
                .update(&(at as u32).to_ne_bytes(), &fd.to_ne_bytes(), BPF_ANY)?;
        }
        Ok(())
    }

    /// Sets `n` (and the counter back to 0).
    fn set_count(&self, n: u32) -> io::Result<()> {
        let mut value = [0u8; STATE_SIZE as usize];
        value[..4].copy_from_slice(&n.to_ne_bytes());
        self.state.update(&0u32.to_ne_bytes(), &value, BPF_ANY)
    }

    /// The round-robin counter: connections (and migrated requests) steered since `n` last
    /// changed.
    #[cfg(test)]
    fn counter(&self) -> u64 {
        let value = self.state.lookup(&0u32.to_ne_bytes()).unwrap();
        u64::from_ne_bytes(value[8..16].try_into().unwrap())
    }
}

/// The cluster's steering state, kept by the listener table: how groups balance, and whether
/// BPF could be loaded, decided once (the first group, or the probe at start).
#[derive(Debug, Default)]
pub(crate) struct Steerer {
    /// How every group's program picks a socket.
    balance: Balance,
    /// `Ok` once a group was set up; the error of the first refusal.
    decided: OnceLock<Result<(), String>>,
    /// Set once the log said a least-conn worker reports no load.
    pub(crate) said_no_reports: AtomicBool,
}

impl Steerer {
    /// Steering by `balance` (least-conn, else round-robin), not decided yet.
    pub(crate) fn new(balance: Balance) -> Steerer {
        Steerer {
            balance,
            ..Steerer::default()
        }
    }

    /// A new group, or `None` when BPF is refused (the listener then works as in reuseport
    /// mode). The first refusal decides for the cluster's life.
    pub(crate) fn group(&self) -> Option<Arc<SteerGroup>> {
        if let Some(Err(_)) = self.decided.get() {
            return None;
        }
        match SteerGroup::new(self.balance) {
            Ok(group) => {
                let _ = self.decided.set(Ok(()));
                let group = Arc::new(group);
                if group.by_load() {
                    keep_normalized(Arc::downgrade(&group));
                }
                Some(group)
            }
            Err(e) => {
                if self.decided.set(Err(e.to_string())).is_err() {
                    // BPF worked for an earlier group: this one is the exception.
                    tracing::error!(error = %e, "steer: no BPF program for a listener; its \
                        workers accept on reuseport sockets (kernel hash)");
                }
                None
            }
        }
    }

    /// Decides now, if not yet: the error when BPF is refused.
    pub(crate) fn probe(&self) -> Result<(), String> {
        if self.decided.get().is_none() {
            drop(self.group());
        }
        self.decided.get().cloned().unwrap_or(Ok(()))
    }

    /// `Some(true)` once a group was set up, `Some(false)` once BPF was refused, `None`
    /// before anything steered was bound.
    pub(crate) fn status(&self) -> Option<bool> {
        self.decided.get().map(Result::is_ok)
    }

    /// Whether the groups balance by load (least-conn).
    pub(crate) fn by_load(&self) -> bool {
        self.balance == Balance::LeastConn
    }
}

/// Least-conn: every [`NORMALIZE_EVERY`], for as long as the group lives, keeps its counts
/// from wrapping ([`SteerGroup::normalize`]), on a thread that holds no copy of it.
fn keep_normalized(group: std::sync::Weak<SteerGroup>) {
    let run = move || loop {
        std::thread::sleep(NORMALIZE_EVERY);
        match group.upgrade() {
            Some(group) => group.normalize(),
            None => return,
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("forkline-steer-counts".into())
        .spawn(run)
    {
        tracing::warn!(error = %e, "steer: cannot start the least-conn count keeper");
    }
}

/// How often a socket still held by another primary's socket array tries to enter ours.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Puts `slot`'s `socket` in `group`'s array for ready worker `seq`. A socket passed by an
/// upgrade may still be in the old primary's array (EBUSY: a socket is in one array at a time)
/// until that primary exits: it is served meanwhile, not steered to, and tries again every
/// [`RETRY_EVERY`] for as long as the worker is ready (a thread that holds no copy of it).
pub(crate) fn enter(group: &Arc<SteerGroup>, slot: usize, seq: u64, socket: &Arc<OwnedFd>) {
    match group.worker_ready(slot, seq, socket) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            tracing::info!(
                slot,
                "steer: the socket is still in the previous primary's map; it joins ours once \
                 that primary has exited"
            );
            let (group, socket) = (Arc::downgrade(group), Arc::downgrade(socket));
            let retry = move || loop {
                std::thread::sleep(RETRY_EVERY);
                let (Some(group), Some(socket)) = (group.upgrade(), socket.upgrade()) else {
                    return;
                };
                if !group.waits(slot, seq) {
                    return;
                }
                match group.worker_ready(slot, seq, &socket) {
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                    Err(e) => {
                        tracing::warn!(slot, error = %e, "steer: a socket could not join the map");
                        return;
                    }
                    Ok(()) => return,
                }
            };
            if let Err(e) = std::thread::Builder::new()
                .name("forkline-steer".into())
                .spawn(retry)
            {
                tracing::warn!(slot, error = %e, "steer: cannot retry joining the map");
            }
        }
        Err(e) => {
            tracing::warn!(slot, error = %e, "steer: a worker's socket could not join the map")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::{SocketAddr, TcpListener, TcpStream};

    /// A listening reuseport socket on 127.0.0.1:`port` (0: a free one).
    fn member(port: u16) -> Arc<OwnedFd> {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        socket.set_reuse_port(true).unwrap();
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
            .unwrap();
        socket.listen(64).unwrap();
        Arc::new(socket.into())
    }

    fn port_of(socket: &OwnedFd) -> u16 {
        socket2::SockRef::from(socket)
            .local_addr()
            .unwrap()
            .as_socket()
            .unwrap()
            .port()
    }

    /// Accepts what is queued on `socket` now (non-blocking), closing each.
    fn drain(socket: &OwnedFd) -> usize {
        let listener = TcpListener::from(socket.try_clone().unwrap());
        listener.set_nonblocking(true).unwrap();
        let mut n = 0;
        while listener.accept().is_ok() {
            n += 1;
        }
        n
    }

    #[test]
    fn the_program_jumps_land_on_the_pass_block() {
        let insns = program(3, 4);
        assert_eq!(insns.len(), 23);
        // Both early exits (7 and 9) jump to 21, `r0 = SK_PASS`.
        for at in [7usize, 9] {
            let target = at as i64 + 1 + i64::from(insns[at].off());
            assert_eq!(target, 21, "jump at {at}");
        }
    }

    #[test]
    fn round_robin_in_the_kernel_over_the_ready_sockets_only() {
        let group = match SteerGroup::new(Balance::RoundRobin) {
            Ok(group) => group,
            Err(e) => {
                eprintln!("skipped: BPF not allowed here ({e})");
                return;
            }
        };
        let first = member(0);
        group.prepare(first.as_fd()).unwrap();
        let port = port_of(&first);
        let sockets: Vec<Arc<OwnedFd>> = std::iter::once(first)
            .chain((1..4).map(|_| {
                let s = member(port);
                group.prepare(s.as_fd()).unwrap();
                s
            }))
            .collect();
        // Slots 0, 1 and 3 ready; 2 not.
        for slot in [0, 1, 3] {
            group
                .worker_ready(slot, slot as u64 + 100, &sockets[slot])
                .unwrap();
        }
        assert_eq!(group.slots(), vec![0, 1, 3]);
        // Connects `n` clients one after the other and counts where each was queued.
        let connect = |n: usize| {
            let clients: Vec<TcpStream> = (0..n)
                .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
                .collect();
            let mut counts = vec![0; sockets.len()];
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while counts.iter().sum::<usize>() < n {
                assert!(std::time::Instant::now() < deadline, "{counts:?} of {n}");
                for (count, socket) in counts.iter_mut().zip(&sockets) {
                    *count += drain(socket);
                }
                std::thread::yield_now();
            }
            drop(clients);
            counts
        };
        assert_eq!(connect(30), vec![10, 10, 0, 10]);
        assert_eq!(group.counter(), 30);
        // Slot 0 goes: slot 3 takes its index; the counter starts over.
        group.worker_gone(0, 100);
        assert_eq!(group.slots(), vec![3, 1]);
        assert_eq!(connect(20), vec![0, 10, 0, 10]);
        // A second ready worker in slot 1 (a replacement): one exit keeps the slot in.
        group.worker_ready(1, 201, &sockets[1]).unwrap();
        group.worker_gone(1, 101);
        assert_eq!(group.slots(), vec![3, 1]);
        group.slot_released(1);
        group.slot_released(3);
        assert!(group.slots().is_empty());
        // Nobody in the array: the kernel hashes over the whole group.
        let counts = connect(40);
        assert_eq!(counts.iter().sum::<usize>(), 40);
        assert!(counts.iter().filter(|&&c| c > 0).count() > 1, "{counts:?}");
        // The group holds no copy of a socket that left.
        assert!(sockets.iter().all(|s| Arc::strong_count(s) == 1));
    }

    #[test]
    fn the_least_conn_program_jumps_land_where_they_say() {
        let insns = least_conn_program(3, 4, 5);
        assert_eq!(insns.len(), 53);
        let target = |at: usize| at as i64 + 1 + i64::from(insns[at].off());
        // Early exits to PASS (51); the scan's exit to DONE (37); the skip over a better
        // load to NEXT (35); the back edge to LOOP (23).
        for at in [7usize, 9, 10, 19] {
            assert_eq!(target(at), 51, "jump at {at}");
        }
        assert_eq!(target(23), 37);
        assert_eq!(target(32), 35);
        assert_eq!(target(36), 23);
    }

    /// Connects `n` clients one after the other to `port` and counts where each was queued,
    /// among `sockets` (accepting and closing each).
    fn queued_on(port: u16, sockets: &[Arc<OwnedFd>], n: usize) -> Vec<usize> {
        let clients: Vec<TcpStream> = (0..n)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        let mut counts = vec![0; sockets.len()];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while counts.iter().sum::<usize>() < n {
            assert!(std::time::Instant::now() < deadline, "{counts:?} of {n}");
            for (count, socket) in counts.iter_mut().zip(sockets) {
                *count += drain(socket);
            }
            std::thread::yield_now();
        }
        drop(clients);
        counts
    }

    #[test]
    fn least_conn_in_the_kernel_fills_the_least_loaded_first() {
        let group = match SteerGroup::new(Balance::LeastConn) {
            Ok(group) => group,
            Err(e) => {
                eprintln!("skipped: BPF not allowed here ({e})");
                return;
            }
        };
        assert!(group.by_load());
        let first = member(0);
        group.prepare(first.as_fd()).unwrap();
        let port = port_of(&first);
        let sockets: Vec<Arc<OwnedFd>> = std::iter::once(first)
            .chain((1..3).map(|_| {
                let s = member(port);
                group.prepare(s.as_fd()).unwrap();
                s
            }))
            .collect();
        for (slot, socket) in sockets.iter().enumerate() {
            group.worker_ready(slot, slot as u64, socket).unwrap();
        }
        // Slot 0 reports 5 open: the next 10 go to the idle two, which the program counts
        // itself as it steers (5 each), then all are even and ties go round-robin.
        group.report_load(0, 0, 5);
        assert_eq!(queued_on(port, &sockets, 10), vec![0, 5, 5]);
        assert_eq!(queued_on(port, &sockets, 6), vec![2, 2, 2]);
        // Slot 1's worker reports that all but one of its connections closed.
        group.report_load(1, 1, 1);
        assert_eq!(queued_on(port, &sockets, 6), vec![0, 6, 0]);
        // Slot 0 leaves: slot 2 moves into its index, with its count (7), and slot 1 (7)
        // and slot 2 share what comes.
        group.worker_gone(0, 0);
        assert_eq!(group.slots(), vec![2, 1]);
        assert_eq!(group.load_at(0), 7);
        assert_eq!(queued_on(port, &sockets, 4), vec![0, 2, 2]);
        // A report for a slot not in the array changes nothing.
        group.report_load(0, 0, 0);
        assert_eq!(queued_on(port, &sockets, 2), vec![0, 1, 1]);
        // A reload: slot 1's replacement (worker 11) is ready beside worker 1; the slot counts
        // both reports, and the old worker's goes with it.
        group.worker_ready(1, 11, &sockets[1]).unwrap();
        group.report_load(1, 1, 30);
        group.report_load(1, 11, 2);
        assert_eq!(group.load_at(1), 32);
        group.worker_gone(1, 1);
        assert_eq!(group.slots(), vec![2, 1]);
        assert_eq!(group.load_at(1), 2);
    }

    #[test]
    fn counts_that_only_grow_are_brought_down_together() {
        let group = match SteerGroup::new(Balance::LeastConn) {
            Ok(group) => group,
            Err(e) => {
                eprintln!("skipped: BPF not allowed here ({e})");
                return;
            }
        };
        let first = member(0);
        group.prepare(first.as_fd()).unwrap();
        let second = member(port_of(&first));
        group.prepare(second.as_fd()).unwrap();
        group.worker_ready(0, 0, &first).unwrap();
        group.worker_ready(1, 1, &second).unwrap();
        group.set_load(0, 100);
        group.set_load(1, 103);
        group.normalize();
        assert_eq!(
            (group.load_at(0), group.load_at(1)),
            (100, 103),
            "small: left alone"
        );
        group.set_load(0, NORMALIZE_ABOVE + 5);
        group.set_load(1, NORMALIZE_ABOVE + 9);
        group.normalize();
        assert_eq!((group.load_at(0), group.load_at(1)), (0, 4));
    }

    #[test]
    fn the_first_refusal_decides_for_the_cluster() {
        // (`FORKLINE_TEST_NO_BPF` is process-wide: the integration tests set it per primary.)
        let steerer = Steerer::new(Balance::RoundRobin);
        let _ = steerer.decided.set(Err("refused".into()));
        assert!(steerer.group().is_none());
        assert_eq!(steerer.status(), Some(false));
        assert_eq!(steerer.probe(), Err("refused".into()));
    }
}
