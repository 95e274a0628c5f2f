//! Hints where users go wrong, each said once in the log: a server started with no socket to
//! share, round-robin with a program not built on the forkline library, shared mode piling
//! long-lived connections onto one worker, and proxy-mode workers reachable around the proxy.
//! A hint never stops the cluster; the checks that run while it serves read `/proc` every few
//! seconds and stop once they have spoken.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use forkline::{Cluster, Mode};

use crate::proc_net::{self, ESTABLISHED, LISTEN};

/// How often the running checks look.
const EVERY: Duration = Duration::from_secs(3);

/// What a program built on the forkline library necessarily contains: the variable it reads
/// its IPC channel from.
const LIBRARY_MARK: &[u8] = forkline::protocol::wire::ENV_IPC_FD.as_bytes();

/// Fewest open connections before shared mode's balance is judged.
const IMBALANCE_MIN_CONNECTIONS: usize = 8;

/// Hints about the command line, before the cluster starts.
pub fn at_start(mode: Mode, program: &Path, has_sockets: bool) {
    if !has_sockets {
        tracing::warn!(
            "hint: no --listen address: workers get no socket from forkline; a server that binds \
             its own port fails with EADDRINUSE in every worker but the first (give -l ADDR: its \
             own bind of that address then gets forkline's socket; or ignore this for workers \
             that serve no socket)"
        );
    }
    if mode == Mode::RoundRobin && has_sockets && built_without_library(program) == Some(true) {
        tracing::warn!(
            "hint: round-robin hands connections over forkline's IPC channel, which only programs \
             built on the forkline library read; {} is not one (a wrapper that execs one is \
             fine): use --mode shared, reuseport or proxy for other programs",
            program.display()
        );
    }
}

/// True when `program` is readable and does not contain the library's mark; `None` when it
/// cannot be read.
fn built_without_library(program: &Path) -> Option<bool> {
    let mut file = std::fs::File::open(program).ok()?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut kept = 0;
    loop {
        let read = file.read(&mut buffer[kept..]).ok()?;
        if read == 0 {
            return Some(true);
        }
        let end = kept + read;
        if buffer[..end]
            .windows(LIBRARY_MARK.len())
            .any(|w| w == LIBRARY_MARK)
        {
            return Some(false);
        }
        // Keep the tail, in case the mark straddles two reads.
        kept = (LIBRARY_MARK.len() - 1).min(end);
        buffer.copy_within(end - kept..end, 0);
    }
}

/// Starts the checks that watch the running cluster (shared and proxy modes).
pub fn watch(cluster: Cluster, mode: Mode) {
    if !matches!(mode, Mode::Shared | Mode::Proxy) {
        return;
    }
    tokio::spawn(async move {
        let mut checked: HashSet<u32> = HashSet::new();
        let mut tick = tokio::time::interval(EVERY);
        for round in 0u64.. {
            tick.tick().await;
            // Reading /proc/net/tcp walks every TCP socket of the machine (after a burst of
            // short connections, tens of thousands in TIME_WAIT): the imbalance check, which
            // never ends, runs every 3 s for its first minute, then every 30 s.
            if mode == Mode::Shared && round >= 20 && round % 10 != 0 {
                continue;
            }
            let workers: Vec<(usize, u32)> = cluster
                .status()
                .iter()
                .filter_map(|slot| Some((slot.slot, slot.pid?)))
                .collect();
            let said = match mode {
                Mode::Proxy => proxy_listens_everywhere(&workers, &mut checked),
                _ => shared_imbalance(&cluster, &workers),
            };
            if said {
                return;
            }
        }
    });
}

/// Warns (and returns true) when a proxy-mode worker listens on every interface.
fn proxy_listens_everywhere(workers: &[(usize, u32)], checked: &mut HashSet<u32>) -> bool {
    // Nothing new to look at: no reading of /proc/net/tcp.
    if workers.iter().all(|(_, pid)| checked.contains(pid)) {
        return false;
    }
    let sockets = proc_net::tcp_sockets();
    for &(slot, pid) in workers {
        if checked.contains(&pid) {
            continue;
        }
        let mine = proc_net::socket_inodes(pid);
        let listening: Vec<SocketAddr> = sockets
            .iter()
            .filter(|s| s.state == LISTEN && mine.contains(&s.inode))
            .map(|s| s.local)
            .collect();
        if let Some(open) = listening.iter().find(|a| a.ip().is_unspecified()) {
            tracing::warn!(
                "hint: proxy mode: worker {slot} (pid {pid}) listens on {open}, every interface: \
                 clients can reach it around the proxy; bind 127.0.0.1 on $PORT instead"
            );
            return true;
        }
        if !listening.is_empty() {
            checked.insert(pid);
        }
    }
    false
}

/// Warns (and returns true) when, in shared mode, one worker holds most open connections.
fn shared_imbalance(cluster: &Cluster, workers: &[(usize, u32)]) -> bool {
    if workers.len() < 2 {
        return false;
    }
    let ports: HashSet<u16> = cluster
        .listen_addresses()
        .iter()
        .filter_map(|a| a.parse::<SocketAddr>().ok())
        .map(|a| a.port())
        .collect();
    if ports.is_empty() {
        return false;
    }
    let open: HashSet<u64> = proc_net::tcp_sockets()
        .into_iter()
        .filter(|s| s.state == ESTABLISHED && ports.contains(&s.local.port()))
        .map(|s| s.inode)
        .collect();
    let held: Vec<(usize, u32, usize)> = workers
        .iter()
        .map(|&(slot, pid)| {
            let count = proc_net::socket_inodes(pid)
                .iter()
                .filter(|inode| open.contains(inode))
                .count();
            (slot, pid, count)
        })
        .collect();
    let total: usize = held.iter().map(|h| h.2).sum();
    let Some(&(slot, pid, most)) = held.iter().max_by_key(|h| h.2) else {
        return false;
    };
    if total < IMBALANCE_MIN_CONNECTIONS || most * 4 < total * 3 {
        return false;
    }
    tracing::warn!(
        "hint: shared mode: worker {slot} (pid {pid}) holds {most} of the {total} open \
         connections: the kernel gives a shared socket's connections to whichever worker accepts \
         first, and long-lived (keep-alive) ones pile up there; --mode reuseport spreads new \
         connections evenly"
    );
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_library_programs_from_others() {
        let dir = std::env::temp_dir().join(format!("forkline-hints-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = dir.join("plain");
        std::fs::write(&plain, b"#!/bin/sh\nexec python3 server.py\n").unwrap();
        assert_eq!(built_without_library(&plain), Some(true));
        // The mark across a read boundary is still found.
        let mut big = vec![b'x'; (1 << 20) - 5];
        big.extend_from_slice(LIBRARY_MARK);
        let library = dir.join("library");
        std::fs::write(&library, &big).unwrap();
        assert_eq!(built_without_library(&library), Some(false));
        assert_eq!(built_without_library(&dir.join("missing")), None);
        // This test binary links the library.
        let me = std::env::current_exe().unwrap();
        assert_eq!(built_without_library(&me), Some(false));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
