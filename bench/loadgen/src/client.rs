//! One exchange of the seed workload from the client side: connect, read to EOF, parse the
//! worker PID, close. Every blocking step has its own timeout, so a stuck server costs a
//! bounded wait and shows up as an error instead of a hang.

use std::io::{self, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::response::parse_worker_pid;

/// A response longer than this is not a seed response; stop reading and call it bad.
const MAX_RESPONSE: usize = 4096;

/// Which local address each connection comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SourceAddrs {
    /// Bind every connection to a random `127.a.b.c` address (port chosen by the kernel).
    ///
    /// The server closes first, so the server side of each connection sits in TIME_WAIT for
    /// 60 s keyed by the client's (address, port). Spreading clients over the 16M loopback
    /// addresses keeps those 4-tuples from ever being reused during a run, so the ~28k
    /// ephemeral ports of one address cannot run out and no SYN lands on a TIME_WAIT entry.
    Random,
    /// Let the kernel pick the source address (127.0.0.1 for a 127.0.0.1 target).
    Kernel,
}

/// How a single exchange failed. The order is the order reports list them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Nothing listens: connect got RST (ECONNREFUSED).
    Refused,
    /// The connection was reset or aborted after it was set up.
    Reset,
    /// Connect or a read did not finish within the per-operation timeout.
    Timeout,
    /// No local address/port could be had (ephemeral port exhaustion).
    AddrUnavailable,
    /// The server answered with something that is not `Request handled by worker-PID`.
    BadResponse,
    /// Any other I/O error.
    Other,
}

impl Failure {
    /// Every kind, in report order.
    pub const ALL: [Failure; 6] = [
        Failure::Refused,
        Failure::Reset,
        Failure::Timeout,
        Failure::AddrUnavailable,
        Failure::BadResponse,
        Failure::Other,
    ];

    /// Position in [`Failure::ALL`], for counting in a fixed-size array.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name used in reports and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Failure::Refused => "refused",
            Failure::Reset => "reset",
            Failure::Timeout => "timeout",
            Failure::AddrUnavailable => "addr_unavailable",
            Failure::BadResponse => "bad_response",
            Failure::Other => "other",
        }
    }

    /// Sorts an I/O error into a failure kind.
    pub fn from_io(err: &io::Error) -> Failure {
        match err.kind() {
            io::ErrorKind::ConnectionRefused => Failure::Refused,
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Failure::Reset,
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
            io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => Failure::AddrUnavailable,
            _ => Failure::Other,
        }
    }
}

/// What every exchange needs to know; shared read-only by all client threads.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The server to load.
    pub addr: SocketAddr,
    /// Limit for `connect` and, separately, for each `read`.
    pub timeout: Duration,
    /// Where connections come from.
    pub source: SourceAddrs,
    /// Close with `SO_LINGER 0` (RST instead of FIN). Off by default: a Node worker that gets
    /// the RST after `socket.end()` emits `error`, which kills a worker without a handler.
    pub linger0: bool,
}

/// A small xorshift generator for source addresses; quality does not matter, speed does.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `seed` (any value; zero is remapped).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next pseudo-random number.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A random `127.a.b.c` address with `c` in 1..=254 (never .0 or .255).
    pub fn loopback_v4(&mut self) -> Ipv4Addr {
        let r = self.next_u64();
        let a = (r >> 8) as u8;
        let b = (r >> 16) as u8;
        let c = 1 + (r % 254) as u8;
        Ipv4Addr::new(127, a, b, c)
    }
}

/// Runs one exchange and returns the PID of the worker that answered.
///
/// `buf` is scratch space reused across calls to avoid an allocation per request.
pub fn exchange(opts: &ClientOptions, rng: &mut Rng, buf: &mut Vec<u8>) -> Result<u32, Failure> {
    let socket = connect(opts, rng).map_err(|e| Failure::from_io(&e))?;
    let result = read_response(&socket, buf);
    if opts.linger0 {
        // Best effort: if this fails the socket just closes normally.
        let _ = socket.set_linger(Some(Duration::ZERO));
    }
    drop(socket);
    result?;
    parse_worker_pid(buf).ok_or(Failure::BadResponse)
}

fn connect(opts: &ClientOptions, rng: &mut Rng) -> io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(opts.addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if opts.source == SourceAddrs::Random {
        if let IpAddr::V4(target) = opts.addr.ip() {
            if target.is_loopback() {
                let local = SocketAddr::new(IpAddr::V4(rng.loopback_v4()), 0);
                socket.bind(&SockAddr::from(local))?;
            }
        }
    }
    socket.connect_timeout(&SockAddr::from(opts.addr), opts.timeout)?;
    socket.set_read_timeout(Some(opts.timeout))?;
    Ok(socket)
}

fn read_response(socket: &Socket, buf: &mut Vec<u8>) -> Result<(), Failure> {
    buf.clear();
    let mut chunk = [0u8; 512];
    let mut reader: &Socket = socket;
    loop {
        match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_RESPONSE {
                    return Err(Failure::BadResponse);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::from_io(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_loopback_stays_in_range() {
        let mut rng = Rng::new(0);
        for _ in 0..10_000 {
            let ip = rng.loopback_v4();
            assert!(ip.is_loopback());
            let last = ip.octets()[3];
            assert!((1..=254).contains(&last));
        }
    }

    #[test]
    fn io_errors_are_sorted() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(Failure::from_io(&refused), Failure::Refused);
        let timeout = io::Error::from(io::ErrorKind::WouldBlock);
        assert_eq!(Failure::from_io(&timeout), Failure::Timeout);
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }
}
