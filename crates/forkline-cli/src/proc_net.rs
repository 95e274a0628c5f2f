//! The TCP sockets a process holds, read from Linux's `/proc`: `/proc/net/tcp{,6}` lists every
//! socket with its local address, state and inode; `/proc/PID/fd` names the inodes a process
//! holds. Used for hints only: a read that fails gives nothing, never an error.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`).
pub const ESTABLISHED: u8 = 0x01;
/// A listening socket.
pub const LISTEN: u8 = 0x0A;

/// One line of `/proc/net/tcp` or `tcp6`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSocket {
    /// Its local address.
    pub local: SocketAddr,
    /// Its state (`ESTABLISHED`, `LISTEN`, ...).
    pub state: u8,
    /// Its inode, as `/proc/PID/fd` links name it (`socket:[INODE]`).
    pub inode: u64,
}

/// Every TCP socket of this network namespace.
pub fn tcp_sockets() -> Vec<TcpSocket> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(parse_line)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The socket inodes process `pid` holds open.
pub fn socket_inodes(pid: u32) -> HashSet<u64> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return HashSet::new();
    };
    entries
        .flatten()
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .filter_map(|target| {
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// `sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...`.
fn parse_line(line: &str) -> Option<TcpSocket> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let local = parse_address(fields.get(1)?)?;
    let state = u8::from_str_radix(fields.get(3)?, 16).ok()?;
    let inode = fields.get(9)?.parse().ok()?;
    Some(TcpSocket {
        local,
        state,
        inode,
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word in the host's
/// byte order, as the kernel prints it.
fn parse_address(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each word was printed as a number: its bytes, in memory order, are the address's.
    let bytes: Vec<u8> = (0..ip.len() / 8)
        .map(|i| u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect::<Option<Vec<u32>>>()?
        .into_iter()
        .flat_map(u32::to_ne_bytes)
        .collect();
    let ip = match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernels_lines() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 123456 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_line(v4),
            Some(TcpSocket {
                local: "127.0.0.1:8080".parse().unwrap(),
                state: LISTEN,
                inode: 123456
            })
        );
        let any6 = "   1: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 99 1 0000000000000000 100 0 0 10 0";
        assert_eq!(
            parse_line(any6).unwrap().local,
            "[::]:8080".parse().unwrap()
        );
        let lo6 = "   2: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 01 00000000:00000000 00:00000000 00000000  1000        0 7 1 0000000000000000 100 0 0 10 0";
        let socket = parse_line(lo6).unwrap();
        assert_eq!(socket.local, "[::1]:80".parse().unwrap());
        assert_eq!(socket.state, ESTABLISHED);
        assert_eq!(parse_line("  sl  local_address rem_address"), None);
    }

    #[test]
    fn finds_a_socket_this_process_listens_on() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = listener.local_addr().unwrap();
        let mine = socket_inodes(std::process::id());
        assert!(tcp_sockets()
            .iter()
            .any(|s| s.local == local && s.state == LISTEN && mine.contains(&s.inode)));
    }
}
