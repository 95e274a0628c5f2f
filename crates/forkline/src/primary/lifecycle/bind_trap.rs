//! Binds that join forkline's socket: a plain program that binds the `--listen` address itself
//! (`app.run(port=8000)`, a Go binary with a fixed `:8080`) would fail with EADDRINUSE in every
//! worker but one. In shared, reuseport and steer modes each such worker starts under a seccomp
//! filter that traps `bind` (`sys::seccomp`), and this task answers: a bind of a `--listen` TCP
//! address (its port, on that address or on any) gets forkline's socket for the worker — the
//! shared one, or its slot's own `SO_REUSEPORT` socket in the steered group — installed on the
//! program's fd, and returns 0, so its `listen()` succeeds on it; any other bind goes on
//! untouched. Where the kernel refuses the filter, the program runs untrapped, said once.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::io::Interest;

use crate::primary::core::Core;
use crate::primary::handle::WorkerHandle;
use crate::primary::traffic::listeners::BoundListener;
use crate::protocol::{Mode, SocketKind};
use crate::sys::seccomp;

/// Said once per process: binds cannot be trapped here.
static SAID_REFUSED: AtomicBool = AtomicBool::new(false);

/// True when workers start with their binds trapped: a mode where workers accept, a TCP
/// `--listen` address, plain programs (not Node's channel, not the library's), and the option.
pub(crate) fn wanted(core: &Core) -> bool {
    let opts = core.opts();
    opts.trap_binds
        && matches!(opts.mode, Mode::Shared | Mode::Reuseport | Mode::Steer)
        && !opts.node_ipc
        && !core.expect_protocol()
        && core.prebound().iter().any(|l| l.kind == SocketKind::Tcp)
}

/// Arranges for the worker `command` starts to trap its binds; the primary's end of the
/// socket the child reports on. `None` where this is refused before the start (said once).
pub(crate) fn prepare(core: &Core, command: &mut std::process::Command) -> Option<OwnedFd> {
    if std::env::var_os("FORKLINE_TEST_NO_SECCOMP").is_some() {
        say_refused(core, "seccomp refused (FORKLINE_TEST_NO_SECCOMP)");
        return None;
    }
    // Before 5.9 the kernel cannot put a socket on the program's fd (ADDFD with SETFD), and
    // before 5.5 it cannot even let a call go on (CONTINUE): every bind would hang.
    if !kernel_at_least(5, 9) {
        say_refused(core, "Linux 5.9 or later is needed");
        return None;
    }
    match crate::sys::seqpacket_pair() {
        Ok((ours, theirs)) => {
            seccomp::trap_binds(command, theirs);
            Some(ours)
        }
        Err(e) => {
            say_refused(core, &e.to_string());
            None
        }
    }
}

/// The filter's listener the started child sent (it sent it before it exec'd, so it is there
/// now), or `None` when the kernel refused the filter (said once).
pub(crate) fn listener_from(core: &Core, ours: OwnedFd) -> Option<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut fds = Vec::new();
    match crate::sys::recv_packet(ours.as_fd(), &mut byte, &mut fds, true) {
        Ok((1, _)) if !fds.is_empty() => fds.pop(),
        Ok(_) => {
            say_refused(core, "the kernel refused the seccomp filter");
            None
        }
        Err(e) => {
            say_refused(core, &e.to_string());
            None
        }
    }
}

/// True when the running kernel is `major.minor` or later (`uname -r`).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    release_at_least(&release, major, minor)
}

fn release_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    match (parts.next(), parts.next()) {
        (Some(a), Some(b)) => (a, b) >= (major, minor),
        _ => false,
    }
}

fn say_refused(core: &Core, why: &str) {
    if SAID_REFUSED.swap(true, Ordering::Relaxed) {
        return;
    }
    let address = core
        .prebound()
        .iter()
        .find(|l| l.kind == SocketKind::Tcp)
        .map(|l| l.local.clone())
        .unwrap_or_default();
    tracing::warn!(
        reason = why,
        "binds cannot be trapped here: a program that binds {address} itself gets EADDRINUSE in every worker but one; have it take the socket at fd 3 (LISTEN_FDS) or run it with --mode proxy and $PORT"
    );
}

/// Answers the worker's trapped binds until its filter's last user is gone.
pub(crate) async fn serve(core: Arc<Core>, worker: WorkerHandle, listener: OwnedFd) {
    let listener = match crate::sys::async_fd(listener, Interest::READABLE) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::warn!(worker = worker.id(), error = %e, "cannot watch the worker's binds");
            return;
        }
    };
    loop {
        let mut guard = match listener.readable().await {
            Ok(guard) => guard,
            Err(_) => return,
        };
        // Receiving blocks while nothing is waiting (whatever the fd's flags), and readiness is
        // edge-triggered: every call waiting now is taken, as `poll` sees them, then the next
        // edge is awaited.
        loop {
            match waiting(listener.get_ref()) {
                Waiting::Call => {}
                Waiting::Nothing => break,
                // The filter's users are all gone (the worker and what it started exited).
                Waiting::Closed => return,
            }
            match seccomp::receive(listener.get_ref().as_fd()) {
                Ok(call) => answer(&core, &worker, listener.get_ref().as_fd(), call),
                // The caller died before it could be received; or a signal came.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINTR)) => {}
                Err(_) => return,
            }
        }
        guard.clear_ready();
    }
}

/// What the filter's listener has now.
enum Waiting {
    Call,
    Nothing,
    Closed,
}

fn waiting(listener: &OwnedFd) -> Waiting {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => Waiting::Nothing,
        Ok(_) => {
            let events = fds[0].revents().unwrap_or(PollFlags::empty());
            if events.contains(PollFlags::POLLIN) {
                Waiting::Call
            } else if events.intersects(PollFlags::POLLHUP | PollFlags::POLLERR) {
                Waiting::Closed
            } else {
                Waiting::Nothing
            }
        }
        Err(nix::errno::Errno::EINTR) => Waiting::Nothing,
        Err(_) => Waiting::Closed,
    }
}

/// Lets call `id` go on; where the kernel refuses that, fails it (ENOSYS) rather than leave it
/// waiting.
fn go_on(listener: std::os::fd::BorrowedFd<'_>, id: u64) {
    if let Err(e) = seccomp::continue_call(listener, id) {
        if e.raw_os_error() != Some(libc::ENOENT) {
            let _ = seccomp::answer(listener, id, Err(libc::ENOSYS));
        }
    }
}

/// One trapped `bind(fd, addr, len)`: forkline's socket for a `--listen` address, else on.
/// A call is never left unanswered: where letting it go on fails, it fails with ENOSYS.
fn answer(
    core: &Core,
    worker: &WorkerHandle,
    listener: std::os::fd::BorrowedFd<'_>,
    call: seccomp::Notification,
) {
    let [fd, address, length, ..] = call.data.args;
    let asked = read_address(call.pid, address, length);
    if !seccomp::still_waiting(listener, call.id) {
        return;
    }
    let Some(asked) = asked else {
        go_on(listener, call.id);
        return;
    };
    let Some(bound) = joined_listener(core.prebound(), asked) else {
        go_on(listener, call.id);
        return;
    };
    let target = fd as RawFd;
    let Some(flags) = stream_socket_flags(call.pid, target) else {
        go_on(listener, call.id);
        return;
    };
    let result = bound
        .socket_for(worker.id())
        .map_err(|e| crate::primary::lifecycle::ipc::bind_errno(&e))
        .and_then(|socket| {
            let nonblocking = flags & libc::O_NONBLOCK != 0;
            socket2::SockRef::from(socket.as_ref())
                .set_nonblocking(nonblocking)
                .and_then(|()| {
                    seccomp::replace_fd(
                        listener,
                        call.id,
                        socket.as_fd(),
                        target,
                        flags & libc::O_CLOEXEC != 0,
                    )
                })
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))
        });
    match result {
        Ok(()) => {
            tracing::info!(worker = worker.id(), pid = call.pid, address = %asked, "the worker's own bind joins forkline's socket");
            let _ = seccomp::answer(listener, call.id, Ok(0));
        }
        Err(errno) => {
            tracing::warn!(worker = worker.id(), address = %asked, errno, "the worker's bind could not be given forkline's socket");
            let _ = seccomp::answer(listener, call.id, Err(errno));
        }
    }
}

/// The `--listen` TCP listener a bind of `asked` joins: the same port, on the same address or
/// on any (a program binding `0.0.0.0:8000` under `--listen 127.0.0.1:8000` gets that socket).
fn joined_listener(
    prebound: &[Arc<BoundListener>],
    asked: SocketAddr,
) -> Option<Arc<BoundListener>> {
    prebound
        .iter()
        .filter(|l| l.kind == SocketKind::Tcp)
        .find(|l| {
            l.local
                .parse::<SocketAddr>()
                .is_ok_and(|ours| joins(ours, asked))
        })
        .cloned()
}

/// True when a bind of `asked` should get the socket bound at `ours`.
fn joins(ours: SocketAddr, asked: SocketAddr) -> bool {
    ours.port() == asked.port() && (ours.ip() == asked.ip() || asked.ip().is_unspecified())
}

/// The `sockaddr` at `address` (`length` bytes) in process `pid`'s memory, if IPv4 or IPv6.
fn read_address(pid: u32, address: u64, length: u64) -> Option<SocketAddr> {
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = [0u8; 28];
    let length = (length as usize).min(buf.len());
    mem.read_exact_at(&mut buf[..length], address).ok()?;
    parse_sockaddr(&buf[..length])
}

/// A `sockaddr_in` or `sockaddr_in6` (family in host order, port and address in network order).
fn parse_sockaddr(raw: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(raw.get(..2)?.try_into().ok()?);
    let port = u16::from_be_bytes(raw.get(2..4)?.try_into().ok()?);
    let ip = match i32::from(family) {
        libc::AF_INET => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.get(4..8)?).ok()?)),
        libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(8..24)?).ok()?)),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The file flags of `fd` in process `pid` (its `O_NONBLOCK`, `O_CLOEXEC`), when it is a
/// stream socket (a TCP listener to be); `None` otherwise.
fn stream_socket_flags(pid: u32, fd: RawFd) -> Option<i32> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")).ok()?;
    let flags = info
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .and_then(|f| i32::from_str_radix(f.trim(), 8).ok())?;
    let tgid: u32 = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))?
        .trim()
        .parse()
        .ok()?;
    let pidfd = crate::sys::pidfd_open(tgid).ok()?;
    let copy = crate::sys::pidfd_getfd(pidfd.as_fd(), fd).ok()?;
    let stream = socket2::SockRef::from(&copy)
        .r#type()
        .is_ok_and(|t| t == socket2::Type::STREAM);
    stream.then_some(flags)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_compare_by_major_and_minor() {
        assert!(release_at_least("6.18.44-fc-v1300", 5, 9));
        assert!(release_at_least("5.9.0", 5, 9));
        assert!(release_at_least("5.15.0-91-generic", 5, 9));
        assert!(!release_at_least("5.4.0-42-generic", 5, 9));
        assert!(!release_at_least("4.19.0", 5, 9));
        assert!(!release_at_least("", 5, 9));
    }

    #[test]
    fn a_bind_joins_a_listen_address_on_its_port() {
        let ours: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        assert!(joins(ours, "127.0.0.1:8000".parse().unwrap()));
        assert!(joins(ours, "0.0.0.0:8000".parse().unwrap()));
        assert!(joins(ours, "[::]:8000".parse().unwrap()));
        assert!(!joins(ours, "127.0.0.1:8001".parse().unwrap()));
        assert!(!joins(ours, "127.0.0.2:8000".parse().unwrap()));
        assert!(!joins(ours, "127.0.0.1:0".parse().unwrap()));
    }

    #[test]
    fn reads_ipv4_and_ipv6_socket_addresses() {
        let mut v4 = [0u8; 16];
        v4[..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        v4[2..4].copy_from_slice(&8000u16.to_be_bytes());
        v4[4..8].copy_from_slice(&[127, 0, 0, 1]);
        assert_eq!(parse_sockaddr(&v4), "127.0.0.1:8000".parse().ok());
        let mut v6 = [0u8; 28];
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        v6[2..4].copy_from_slice(&443u16.to_be_bytes());
        v6[23] = 1;
        assert_eq!(parse_sockaddr(&v6), "[::1]:443".parse().ok());
        let mut unix = [0u8; 16];
        unix[..2].copy_from_slice(&(libc::AF_UNIX as u16).to_ne_bytes());
        assert_eq!(parse_sockaddr(&unix), None);
        assert_eq!(parse_sockaddr(&v4[..3]), None);
    }
}
