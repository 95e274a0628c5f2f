//! Systemd out: when the primary was started with `NOTIFY_SOCKET` (a `Type=notify` service),
//! it tells the service manager `READY=1` once all initial workers are ready, `STATUS=` lines as
//! workers come and go, `RELOADING=1` … `READY=1` around an upgrade (with `MAINPID=` of the
//! new primary once it takes over), `STOPPING=1` on shutdown, and `WATCHDOG=1` keep-alives when
//! `WATCHDOG_USEC` asks for them. With an fd store (`FileDescriptorStoreMax=`, seen as
//! `FDSTORE`), the listening sockets forkline bound are put there (`FDSTORE=1`), so that
//! `systemctl restart` hands them back and the port never closes.
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
    /// True when the service has an fd store (`FileDescriptorStoreMax=`, announced in
    /// `FDSTORE`): the listening sockets are kept there across restarts.
    pub fd_store: bool,
}

/// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
/// environment. `Ok(None)` when there is no notify socket.
///
/// Must run before any thread is started (it changes the process environment).
pub fn take() -> io::Result<Option<Notifier>> {
    let path = std::env::var_os("NOTIFY_SOCKET");
    let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
    let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
    let fd_store_max = std::env::var("FDSTORE").ok();
    let fd_store = fd_store_max
        .as_deref()
        .is_some_and(|max| max.parse().is_ok_and(|n: u64| n > 0));
    for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "FDSTORE"] {
        std::env::remove_var(var);
    }
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let address = socket_address(&path)?;
    let ours = watchdog_pid.is_none_or(|pid| pid == std::process::id().to_string());
    let mut inherited = vec![("NOTIFY_SOCKET".into(), path.to_string_lossy().into_owned())];
    if fd_store {
        inherited.push(("FDSTORE".into(), fd_store_max.clone().unwrap_or_default()));
    }
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
        fd_store,
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
    /// Puts `socket` in the service manager's fd store under `name` (`FDSTORE=1`,
    /// `FDNAME=`): systemd keeps it across restarts of the service and passes it back in
    /// `LISTEN_FDS`, so the port is never closed.
    pub fn store_fd(&self, name: &str, socket: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
        use std::os::fd::AsRawFd;
        let address = match self.address.as_pathname() {
            Some(path) => UnixAddr::new(path)?,
            None => {
                use std::os::linux::net::SocketAddrExt;
                let name = self.address.as_abstract_name().unwrap_or_default();
                UnixAddr::new_abstract(name)?
            }
        };
        let state = format!("FDSTORE=1\nFDNAME={name}");
        let fds = [socket.as_raw_fd()];
        sendmsg(
            self.socket.as_raw_fd(),
            &[io::IoSlice::new(state.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            Some(&address),
        )?;
        Ok(())
    }

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
