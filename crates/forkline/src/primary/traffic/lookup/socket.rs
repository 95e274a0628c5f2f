//! Finding the listening socket a proxy-mode worker bound on its `$PORT` and taking a copy of
//! it: the `LISTEN` entry for `127.0.0.1:PORT` in `/proc/net/tcp` names the socket's inode, the
//! worker (or a process it started: a shell that did not `exec`) holds it as `socket:[INODE]`
//! in `/proc/PID/fd`, and `pidfd_getfd` copies that fd into the primary.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

/// Processes looked at, the worker and its descendants, at the most.
const MAX_PROCESSES: usize = 64;

/// A copy of the socket listening on `127.0.0.1:port` that the worker `pid`, or one of its
/// descendants, holds.
pub(crate) fn take_listener(pid: u32, port: u16) -> io::Result<OwnedFd> {
    let inode = listening_inode(port)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("nothing listens on 127.0.0.1:{port}"),
        )
    })?;
    for process in family(pid) {
        let held = crate::primary::procfs::socket_inodes(process);
        if let Some((fd, _)) = held.into_iter().find(|(_, held)| *held == inode) {
            let pidfd = crate::sys::pidfd_open(process)?;
            return crate::sys::pidfd_getfd(pidfd.as_fd(), fd);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("no process of worker {pid} holds the socket of 127.0.0.1:{port}"),
    ))
}

/// The inode of the socket listening on `127.0.0.1:port` (or on any IPv4 address), from
/// `/proc/net/tcp`.
fn listening_inode(port: u16) -> io::Result<Option<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    Ok(listening_inode_in(&table, port))
}

/// [`listening_inode`] over the text of `/proc/net/tcp`: `sl local rem st ... inode`, the local
/// address as `HEXIP:HEXPORT` (the IP in memory order), state `0A` for `LISTEN`.
fn listening_inode_in(table: &str, port: u16) -> Option<u64> {
    let loopback = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (ip, hex_port) = fields.get(1)?.split_once(':')?;
        let listening = fields.get(3) == Some(&"0A");
        let ours =
            u16::from_str_radix(hex_port, 16).ok()? == port && (ip == loopback || ip == "00000000");
        (listening && ours).then(|| fields.get(9)?.parse().ok())?
    })
}

/// True while the worker `pid` (or a process it started) serves a connection it was steered:
/// one queued on its listener of `port` and not accepted yet, or an open one it accepted (whose
/// local address is the public one, `public` its port: the kernel steered it there).
pub(crate) fn serving(pid: u32, port: u16, public: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let (queued, open) = sockets_in(&table, port, public);
    if queued {
        return true;
    }
    family(pid).into_iter().any(|process| {
        crate::primary::procfs::socket_inodes(process)
            .into_iter()
            .any(|(_, inode)| open.contains(&inode))
    })
}

/// From the text of `/proc/net/tcp`: whether the listener of `127.0.0.1:port` has connections
/// waiting to be accepted (its `rx_queue`), and the inodes of the open connections whose local
/// port is `public`.
fn sockets_in(table: &str, port: u16, public: u16) -> (bool, Vec<u64>) {
    let mut queued = false;
    let mut open = Vec::new();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(local), Some(state), Some(queues), Some(inode)) =
            (fields.get(1), fields.get(3), fields.get(4), fields.get(9))
        else {
            continue;
        };
        let Some(local_port) = local
            .split_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
        else {
            continue;
        };
        if *state == "0A" && local_port == port {
            let waiting = queues
                .split_once(':')
                .and_then(|(_, rx)| u64::from_str_radix(rx, 16).ok());
            queued |= waiting.is_some_and(|n| n > 0);
        } else if *state != "0A" && local_port == public {
            if let Ok(inode) = inode.parse::<u64>() {
                if inode != 0 {
                    open.push(inode);
                }
            }
        }
    }
    (queued, open)
}

/// The worker and its descendants, breadth first, at most [`MAX_PROCESSES`].
fn family(pid: u32) -> Vec<u32> {
    let mut found = vec![pid];
    let mut at = 0;
    while at < found.len() && found.len() < MAX_PROCESSES {
        for child in crate::primary::procfs::children(found[at]) {
            if !found.contains(&child) && found.len() < MAX_PROCESSES {
                found.push(child);
            }
        }
        at += 1;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_listening_socket_of_a_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000000000000000 100 0 0 10 0\n";
        assert_eq!(listening_inode_in(table, 8000), Some(4242));
        assert_eq!(listening_inode_in(table, 8001), None);
    }

    #[test]
    fn sees_connections_queued_and_open() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue\n   0: 0100007F:1F40 00000000:0000 0A 00000000:00000002 00:00000000 00000000     0        0 4242 1\n   1: 0100007F:0050 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n";
        assert_eq!(sockets_in(table, 8000, 80), (true, vec![4343]));
        assert_eq!(sockets_in(table, 8001, 81), (false, vec![]));
    }

    #[test]
    fn finds_and_copies_a_listener_of_this_process() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let copy = take_listener(std::process::id(), port).unwrap();
        let address = socket2::SockRef::from(&copy).local_addr().unwrap();
        assert_eq!(address.as_socket(), listener.local_addr().ok());
    }
}
