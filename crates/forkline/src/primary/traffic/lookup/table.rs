//! A kernel-steered proxy's maps and the workers in them: every worker whose own listener was
//! taken has a slot in the socket map (the map holds the socket; the primary keeps no fd of it,
//! so a worker's socket leaves the map by itself when the worker's last fd of it closes), and the
//! turn map lists, in order, the slots new connections go to now — the ready workers.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Mutex;

use super::program::{
    program, PublicAddress, BPF_MAP_TYPE_SOCKMAP, BPF_PROG_TYPE_SK_LOOKUP, BPF_SK_LOOKUP,
};
use crate::primary::traffic::steer::program::{BPF_MAP_TYPE_ARRAY, STATE_SIZE};
use crate::sys::{BpfMap, BPF_ANY};

/// Most workers one kernel-steered proxy holds (the socket map's size).
const MAX_WORKERS: u32 = 1024;

/// The program attached to the network namespace, its maps, and which worker has which slot.
pub(crate) struct KernelSteering {
    state: BpfMap,
    keys: BpfMap,
    socks: BpfMap,
    /// The program and the link that keeps it attached (detached when this is dropped, or
    /// when the primary dies).
    _program: OwnedFd,
    _link: OwnedFd,
    members: Mutex<Members>,
}

/// Who has which slot of the socket map, and the turn order last written.
#[derive(Default)]
struct Members {
    slot_of: HashMap<u64, u32>,
    free: Vec<u32>,
    next: u32,
    turns: Vec<u32>,
}

impl KernelSteering {
    /// Loads the program for `public` and attaches it to this process's network namespace.
    pub(crate) fn start(public: PublicAddress) -> io::Result<KernelSteering> {
        if std::env::var_os("FORKLINE_TEST_NO_BPF").is_some() {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "BPF refused (FORKLINE_TEST_NO_BPF)",
            ));
        }
        let state = BpfMap::create(BPF_MAP_TYPE_ARRAY, 4, STATE_SIZE, 1, "fl_px_state")?;
        let keys = BpfMap::create(BPF_MAP_TYPE_ARRAY, 4, 4, MAX_WORKERS, "fl_px_turns")?;
        let socks = BpfMap::create(BPF_MAP_TYPE_SOCKMAP, 4, 8, MAX_WORKERS, "fl_px_socks")?;
        let insns = program(
            public,
            state.as_raw_fd(),
            keys.as_raw_fd(),
            socks.as_raw_fd(),
        );
        let prog = crate::sys::bpf_prog_load(
            BPF_PROG_TYPE_SK_LOOKUP,
            BPF_SK_LOOKUP,
            &insns,
            c"GPL",
            "forkline_proxy",
        )?;
        let netns = std::fs::File::open("/proc/self/ns/net")?;
        let link = crate::sys::attach_to_netns(prog.as_fd(), netns.as_fd(), BPF_SK_LOOKUP)?;
        Ok(KernelSteering {
            state,
            keys,
            socks,
            _program: prog,
            _link: link,
            members: Mutex::default(),
        })
    }

    /// Puts worker `id`'s listening `socket` in the socket map (not in turn yet); the map keeps
    /// the socket, and `socket` is closed here.
    pub(crate) fn insert(&self, id: u64, socket: OwnedFd) -> io::Result<()> {
        let mut members = self.members.lock().unwrap();
        if members.slot_of.contains_key(&id) {
            return Ok(());
        }
        let slot = match members.free.pop() {
            Some(slot) => slot,
            None if members.next < MAX_WORKERS => {
                members.next += 1;
                members.next - 1
            }
            None => return Err(io::Error::other("too many workers for kernel steering")),
        };
        let fd = socket.as_raw_fd() as u64;
        match self
            .socks
            .update(&slot.to_ne_bytes(), &fd.to_ne_bytes(), BPF_ANY)
        {
            Ok(()) => {
                members.slot_of.insert(id, slot);
                Ok(())
            }
            Err(e) => {
                members.free.push(slot);
                Err(e)
            }
        }
    }

    /// Takes worker `id` out of the turns and the socket map.
    pub(crate) fn remove(&self, id: u64) {
        let mut members = self.members.lock().unwrap();
        let Some(slot) = members.slot_of.remove(&id) else {
            return;
        };
        if members.turns.contains(&slot) {
            let turns: Vec<u32> = members
                .turns
                .iter()
                .copied()
                .filter(|s| *s != slot)
                .collect();
            self.write_turns(&mut members, turns);
        }
        // Gone already when its last fd closed (the kernel removes a closed socket).
        let _ = self.socks.delete(&slot.to_ne_bytes());
        members.free.push(slot);
    }

    /// New connections go to `ids`, in this order, from now on (those with a socket in the
    /// map; the others are skipped).
    pub(crate) fn set_turns(&self, ids: &[u64]) {
        let mut members = self.members.lock().unwrap();
        let turns: Vec<u32> = ids
            .iter()
            .filter_map(|id| members.slot_of.get(id).copied())
            .collect();
        if turns != members.turns {
            self.write_turns(&mut members, turns);
        }
    }

    /// True when worker `id` is in turn now.
    #[cfg(test)]
    pub(crate) fn in_turn(&self, id: u64) -> bool {
        let members = self.members.lock().unwrap();
        members
            .slot_of
            .get(&id)
            .is_some_and(|slot| members.turns.contains(slot))
    }

    /// Writes the turn order: the slots first, then their count (the program reads the count
    /// first, so it never reads a slot not written yet; while it still has the old count, a
    /// stale slot is one whose socket is gone, a miss, which the primary relays).
    fn write_turns(&self, members: &mut Members, turns: Vec<u32>) {
        for (at, slot) in turns.iter().enumerate() {
            let _ = self
                .keys
                .update(&(at as u32).to_ne_bytes(), &slot.to_ne_bytes(), BPF_ANY);
        }
        let mut state = [0u8; STATE_SIZE as usize];
        state[..4].copy_from_slice(&(turns.len() as u32).to_ne_bytes());
        if let Err(e) = self.state.update(&0u32.to_ne_bytes(), &state, BPF_ANY) {
            tracing::warn!(error = %e, "kernel steering: could not update the turns");
        }
        members.turns = turns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    /// Waits (up to 10 s) until `listener` has a connection waiting, and takes it.
    fn accepted_on(listener: &TcpListener) -> bool {
        listener.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if listener.accept().is_ok() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn connections_go_to_the_workers_in_turn_and_to_the_public_socket_without_one() {
        let public = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = public.local_addr().unwrap().port();
        let steering = match KernelSteering::start(PublicAddress {
            ip: Some(std::net::Ipv4Addr::LOCALHOST),
            port,
        }) {
            Ok(steering) => steering,
            Err(e) => {
                eprintln!("skipped: SK_LOOKUP not allowed here ({e})");
                return;
            }
        };
        let workers: Vec<TcpListener> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        for (id, worker) in workers.iter().enumerate() {
            let copy = crate::sys::dup_cloexec(worker.as_fd()).unwrap();
            steering.insert(id as u64, copy).unwrap();
        }
        // In the map, not in turn yet: the public socket gets it.
        let _c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert!(accepted_on(&public));
        steering.set_turns(&[0, 1]);
        assert!(steering.in_turn(0) && steering.in_turn(1));
        let mut clients = Vec::new();
        for turn in 0..4 {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
            assert!(accepted_on(&workers[turn % 2]), "turn {turn}");
        }
        // Worker 1 leaves: everything goes to worker 0.
        steering.remove(1);
        for _ in 0..2 {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
            assert!(accepted_on(&workers[0]));
        }
        // Worker 0's own socket closes: it leaves the map by itself, and the public socket
        // gets the next connection.
        drop(workers);
        clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        assert!(accepted_on(&public));
    }
}
