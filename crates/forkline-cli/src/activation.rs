//! Socket activation in: when systemd (or `systemd-socket-activate`) started forkline with
//! `LISTEN_FDS` and `LISTEN_PID` = our pid — or an old primary did, for an upgrade, with
//! `FORKLINE_UPGRADE_FD` in place of `LISTEN_PID` — the primary serves on those sockets instead
//! of binding its own. The `LISTEN_*` variables are removed from the process environment before
//! any thread starts, so workers never inherit the primary's copies: they get their own from
//! the library, describing the sockets handed to *them*.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use forkline::{ListenSpec, SocketKind};
use listenfd::ListenFd;

use crate::error::CliError;
use crate::parse::ListenAddr;

/// The sockets systemd passed us, in `LISTEN_FDS` order.
#[derive(Debug, Default)]
pub struct Activation {
    /// Each socket's kind and real local address.
    pub listeners: Vec<ListenSpec>,
    /// The sockets themselves (CLOEXEC), same order.
    pub sockets: Vec<Arc<OwnedFd>>,
    /// Names from `LISTEN_FDNAMES`, same order (may be shorter).
    pub names: Vec<String>,
    /// Set when `LISTEN_FDS` was present but meant for another process.
    pub ignored: Option<String>,
    /// Started by an upgrade: an old primary passed the sockets (`FORKLINE_UPGRADE_FD`).
    pub upgrade: bool,
}

impl Activation {
    /// The sockets as listen addresses, for display.
    pub fn addresses(&self) -> Vec<ListenAddr> {
        self.listeners
            .iter()
            .map(|l| ListenAddr::unnamed(l.kind, l.address.clone()))
            .collect()
    }
}

const VARS: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "LISTEN_FDS_FIRST_FD",
];

/// Takes the sockets passed by socket activation, if they are ours, and removes the `LISTEN_*`
/// variables from the environment either way.
///
/// Must run before any thread is started (it changes the process environment).
pub fn take() -> Result<Activation, CliError> {
    let fds = std::env::var("LISTEN_FDS").ok();
    let upgrade = std::env::var_os(forkline::cli_support::ENV_UPGRADE_FD).is_some();
    // An old primary handing over (`forkline upgrade`) cannot know our pid: its
    // FORKLINE_UPGRADE_FD stands for LISTEN_PID.
    if fds.is_some() && std::env::var_os("LISTEN_PID").is_none() && upgrade {
        std::env::set_var("LISTEN_PID", std::process::id().to_string());
    }
    let pid = std::env::var("LISTEN_PID").ok();
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut activation = Activation {
        names,
        upgrade,
        ..Activation::default()
    };
    let result = match (fds, pid) {
        (None, _) => Ok(()),
        (Some(fds), pid) if pid.as_deref() != Some(&std::process::id().to_string()) => {
            activation.ignored = Some(format!(
                "LISTEN_FDS={fds} is for pid {}, not this process; binding --listen addresses instead",
                pid.as_deref().unwrap_or("(unset)")
            ));
            Ok(())
        }
        (Some(fds), _) => adopt(&fds, &mut activation),
    };
    for var in VARS {
        std::env::remove_var(var);
    }
    result.map(|()| activation)
}

fn adopt(fds: &str, activation: &mut Activation) -> Result<(), CliError> {
    let count: usize = fds.trim().parse().map_err(|_| {
        CliError::Runtime(format!(
            "socket activation: LISTEN_FDS={fds} is not a number"
        ))
    })?;
    // Our own pid check passed; listenfd repeats it and takes fds 3..3+count.
    let mut passed = ListenFd::from_env();
    for index in 0..count.min(passed.len()) {
        let fd_number = index + 3;
        let (kind, address, fd): (SocketKind, String, OwnedFd) = if let Ok(Some(tcp)) =
            passed.take_tcp_listener(index)
        {
            let address = tcp.local_addr().map_err(|e| broken(fd_number, e))?;
            (SocketKind::Tcp, address.to_string(), tcp.into())
        } else if let Ok(Some(unix)) = passed.take_unix_listener(index) {
            let address = unix.local_addr().map_err(|e| broken(fd_number, e))?;
            let path = address.as_pathname().ok_or_else(|| {
                    CliError::Runtime(format!(
                        "socket activation: fd {fd_number} is an abstract or unnamed unix socket, which forkline cannot pass on by path"
                    ))
                })?;
            (SocketKind::Unix, path.display().to_string(), unix.into())
        } else if let Ok(Some(udp)) = passed.take_udp_socket(index) {
            let address = udp.local_addr().map_err(|e| broken(fd_number, e))?;
            (SocketKind::Udp, address.to_string(), udp.into())
        } else {
            return Err(CliError::Runtime(format!(
                "socket activation: fd {fd_number} is not a TCP, UDP or unix stream socket"
            )));
        };
        activation.listeners.push(ListenSpec {
            kind,
            address,
            name: None,
        });
        activation.sockets.push(Arc::new(fd));
    }
    Ok(())
}

fn broken(fd: usize, e: std::io::Error) -> CliError {
    CliError::Runtime(format!("socket activation: fd {fd}: {e}"))
}

/// True when `socket` has SO_REUSEPORT set (needed to add more sockets to its group).
pub fn has_reuseport(socket: &OwnedFd) -> bool {
    nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::ReusePort).unwrap_or(false)
}
