//! Free TCP ports for tests, shared by the library's and the CLI's integration tests (the CLI's
//! include this file by path).

/// A TCP port on 127.0.0.1 that is free now and that the kernel never hands out by itself: it
/// is picked below the ephemeral range (`ip_local_port_range`, where connecting clients and
/// `bind(0)` get theirs), so no client of another test can take it between this call and the
/// bind that follows. Each call in a process tries the next port from a start derived from the
/// pid, so tests running in parallel do not pick the same one; a port something holds (even
/// in TIME_WAIT) is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (low, high) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| {
            let mut ends = range.split_whitespace().map(|n| n.parse::<u32>().ok());
            Some((ends.next()??, ends.next()??))
        })
        .unwrap_or((32768, 60999));
    // 10,000 ports below the range, else (a range starting low) the ports above it.
    let (first, count) = if low >= 11024 {
        (low - 10000, 10000)
    } else {
        (high + 1, 65535 - high)
    };
    let offset = std::process::id().wrapping_mul(7919);
    for _ in 0..count {
        let port = first + offset.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed)) % count;
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port in {first}..{}", first + count);
}
