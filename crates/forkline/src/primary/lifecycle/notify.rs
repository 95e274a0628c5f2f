//! The systemd notify protocol served to workers: each worker gets its own datagram socket in
//! `NOTIFY_SOCKET` and may send `READY=1`, `WATCHDOG=1`, `STATUS=...` and `STOPPING=1`, one
//! assignment per line.
//!
//! The sockets are private: a directory with an unguessable name that only the primary (and,
//! under `--user`, the workers' user) may enter, sockets 0600; and, as systemd's
//! `NotifyAccess=` does, every message is checked against the sender's credentials
//! (SO_PASSCRED): only the worker's own process or another process of its process group is
//! heard. Anything else is dropped and counted.

use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials,
};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use crate::primary::cluster::Cluster;
use crate::primary::handle::{WorkerHandle, WorkerState};

/// What a worker said on its notify socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Notice {
    Ready,
    Watchdog,
    Status(String),
    Stopping,
}

/// Parses one datagram (newline-separated `KEY=VALUE` assignments).
pub(crate) fn parse(datagram: &[u8]) -> Vec<Notice> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|line| match line.split_once('=') {
            Some(("READY", "1")) => Some(Notice::Ready),
            Some(("WATCHDOG", "1")) => Some(Notice::Watchdog),
            Some(("STOPPING", "1")) => Some(Notice::Stopping),
            Some(("STATUS", status)) => Some(Notice::Status(status.to_string())),
            _ => None,
        })
        .collect()
}

/// Serves a worker's notify socket: readiness, watchdog pings, status.
///
/// As with systemd's `WatchdogSec=`, the watchdog is armed once start-up is complete, when the
/// worker is ready: start-up is the ready timeout's to judge. Armed at spawn, it killed a
/// worker whose start (a Python interpreter on a loaded machine) took longer than the period
/// just as its `READY=1` arrived, before it could send its first `WATCHDOG=1`.
pub(crate) async fn serve(cluster: Cluster, worker: WorkerHandle, socket: UnixDatagram) {
    let timeout = cluster.inner.opts.worker_timeout;
    // Since the watchdog was armed, or the last ping; `None` until the worker is ready.
    let mut last_ping: Option<Instant> = None;
    let mut buf = vec![0u8; 4096];
    let tick = timeout.map_or(Duration::from_millis(500), |t| {
        (t / 4).max(Duration::from_millis(10))
    });
    let mut warned = false;
    while !worker.is_dead() {
        match tokio::time::timeout(tick, recv_with_sender(&socket, &mut buf)).await {
            Ok(Ok((n, sender))) if from_worker(&worker, sender) => {
                for notice in parse(&buf[..n]) {
                    match notice {
                        Notice::Ready => {
                            crate::primary::lifecycle::readiness::set_ready(&cluster, &worker)
                        }
                        // Before the watchdog is armed a ping changes nothing.
                        Notice::Watchdog if last_ping.is_some() => last_ping = Some(Instant::now()),
                        Notice::Watchdog => {}
                        Notice::Status(status) => {
                            tracing::info!(worker = worker.id(), pid = worker.pid(), %status, "worker status");
                        }
                        Notice::Stopping => worker.set_state(WorkerState::Draining),
                    }
                }
            }
            Ok(Ok((_, sender))) => {
                cluster
                    .inner
                    .notify_rejected
                    .fetch_add(1, Ordering::Relaxed);
                if !warned {
                    warned = true;
                    tracing::warn!(
                        worker = worker.id(),
                        sender = ?sender,
                        "notify message from outside the worker's process group dropped"
                    );
                }
            }
            Ok(Err(_)) => break,
            Err(_elapsed) => {}
        }
        if last_ping.is_none() && worker.state() == WorkerState::Ready {
            last_ping = Some(Instant::now());
        }
        if let (Some(timeout), Some(last_ping)) = (timeout, last_ping) {
            if last_ping.elapsed() > timeout && !worker.is_dead() {
                crate::primary::lifecycle::ipc::worker_error(
                    &cluster,
                    &worker,
                    format!("watchdog: no WATCHDOG=1 for {timeout:?}"),
                );
                break;
            }
        }
    }
    if let Ok(addr) = socket.local_addr() {
        if let Some(path) = addr.as_pathname() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Receives one datagram and the pid of its sender (from SCM_CREDENTIALS).
async fn recv_with_sender(
    socket: &UnixDatagram,
    buf: &mut [u8],
) -> io::Result<(usize, Option<i32>)> {
    loop {
        socket.readable().await?;
        match socket.try_io(Interest::READABLE, || {
            let mut iov = [io::IoSliceMut::new(buf)];
            let mut cmsg = nix::cmsg_space!(UnixCredentials);
            let msg = recvmsg::<UnixAddr>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            )?;
            let sender = msg.cmsgs()?.find_map(|c| match c {
                ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                _ => None,
            });
            Ok((msg.bytes, sender))
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// True when `sender` is the worker or a process of its group (`NotifyAccess=all` within the
/// worker).
fn from_worker(worker: &WorkerHandle, sender: Option<i32>) -> bool {
    let Some(sender) = sender.filter(|pid| *pid > 0) else {
        return false;
    };
    let leader = worker.pid() as i32;
    sender == leader
        || nix::unistd::getpgid(Some(nix::unistd::Pid::from_raw(sender)))
            .is_ok_and(|group| group.as_raw() == leader)
}

/// The directory holding a cluster's notify sockets, removed on drop.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
    /// The workers' user and group, when they run as another user.
    owner: Option<(Option<u32>, Option<u32>)>,
}

impl NotifyDir {
    /// Creates a private directory (0700) with an unguessable name under the runtime or temp
    /// dir (first removing those left by primaries that were killed before they could clean
    /// up). Workers that run as another user (`owner`) own it, so they can reach their socket.
    pub fn create(owner: Option<(Option<u32>, Option<u32>)>) -> io::Result<Self> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        remove_stale(&base);
        let path = base.join(format!(
            "forkline-{}-{}",
            std::process::id(),
            unguessable()?
        ));
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        // Marks the directory as ours, so stale-directory cleanup never touches anything else.
        std::fs::write(path.join(".forkline-notify"), b"")?;
        let owner = owner.filter(|(uid, gid)| uid.is_some() || gid.is_some());
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&path, uid, gid)?;
        }
        Ok(Self { path, owner })
    }

    /// Binds the notify socket of worker `seq`: 0600, the workers' user's, credentials passed.
    pub fn bind(&self, seq: u64) -> io::Result<(UnixDatagram, PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.join(format!("notify-{seq}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        setsockopt(&socket, sockopt::PassCred, &true)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(&path, uid, gid)?;
        }
        Ok((socket, path))
    }
}

/// 16 random hex digits, from the kernel.
fn unguessable() -> io::Result<String> {
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Removes `forkline-PID-*` directories whose primary is no longer running.
fn remove_stale(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("forkline-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive && entry.path().join(".forkline-notify").exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Drop for NotifyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_systemd_assignments() {
        assert_eq!(
            parse(b"READY=1\nSTATUS=warming up\nWATCHDOG=1\nMAINPID=3\nSTOPPING=1"),
            vec![
                Notice::Ready,
                Notice::Status("warming up".into()),
                Notice::Watchdog,
                Notice::Stopping
            ]
        );
        assert!(parse(b"READY=0").is_empty());
    }
}
