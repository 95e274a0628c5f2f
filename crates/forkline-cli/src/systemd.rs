//! Systemd out: when the primary was started with `NOTIFY_SOCKET` (a `Type=notify` service),
//! it tells the service manager `READY=1` once all initial workers are ready, `STATUS=` lines as
//! workers come and go, `RELOADING=1` … `READY=1` around an upgrade (with `MAINPID=` of the
//! new primary once it takes over), `STOPPING=1` on shutdown, and `WATCHDOG=1` keep-alives when
//! `WATCHDOG_USEC` asks for them.
//!
//! The address is read once and the variables are removed from the process environment before
//! any thread starts, so workers never inherit the primary's notify socket (they get their own,
//! served by the primary). That is also why this does not use the `sd-notify` crate: it reads
//! `NOTIFY_SOCKET` from the environment on every call.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A connection to the service manager's notify socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
    /// How often systemd wants `WATCHDOG=1` (half of `WATCHDOG_USEC`), if at all.
    pub watchdog_every: Option<Duration>,
    /// The variables as they were, for a new primary that takes over (`forkline upgrade`):
    /// `NOTIFY_SOCKET`, and `WATCHDOG_USEC` when the watchdog is ours.
    pub inherited: Vec<(String, String)>,
}

/// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
/// environment. `Ok(None)` when there is no notify socket.
///
/// Must run before any thread is started (it changes the process environment).
pub fn take() -> io::Result<Option<Notifier>> {
    let path = std::env::var_os("NOTIFY_SOCKET");
    let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
    let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
        std::env::remove_var(var);
    }
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let address = socket_address(&path)?;
    let ours = watchdog_pid.is_none_or(|pid| pid == std::process::id().to_string());
    let mut inherited = vec![("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned())];
    if let Some(usec) = watchdog_usec.as_ref().filter(|_| ours) {
        inherited.push(("WATCHDOG_USEC".into(), usec.clone()));
    }
    let watchdog_every = watchdog_usec
        .and_then(|usec| usec.parse::<u64>().ok())
        .filter(|&usec| usec > 0 && ours)
        .map(|usec| Duration::from_micros(usec) / 2);
    Ok(Some(Notifier {
        socket: UnixDatagram::unbound()?,
        address,
        watchdog_every,
        inherited,
    }))
}

/// `@name` is an abstract socket; anything else is a path.
fn socket_address(path: &std::ffi::OsStr) -> io::Result<SocketAddr> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::ffi::OsStrExt;
    match path.as_bytes().strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name),
        None => SocketAddr::from_pathname(path),
    }
}

impl Notifier {
    /// Sends `state`, newline-separated `KEY=VALUE` assignments, in one datagram.
    pub fn notify(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            tracing::warn!(error = %e, "could not notify the service manager");
        }
    }
}

/// `MONOTONIC_USEC=…`, which systemd wants with `RELOADING=1`.
pub fn monotonic_usec() -> String {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    format!("MONOTONIC_USEC={now}")
}
