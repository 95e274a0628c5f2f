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
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials};
use tokio::io::Interest;
use tokio::net::UnixDatagram;

use std::sync::Arc;

use crate::primary::core::Core;
use crate::primary::handle::{WorkerHandle, WorkerState};
use crate::primary::lifecycle::notice::WorkerNotice;

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
pub(crate) async fn serve(core: Arc<Core>, worker: WorkerHandle, socket: UnixDatagram) {
    let timeout = core.opts().worker_timeout;
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
                        Notice::Ready => worker.notice(WorkerNotice::Ready),
                        // Before the watchdog is armed a ping changes nothing.
                        Notice::Watchdog if last_ping.is_some() => last_ping = Some(Instant::now()),
                        Notice::Watchdog => {}
                        Notice::Status(status) => {
                            tracing::info!(worker = worker.id(), pid = worker.pid(), %status, "worker status");
                        }
                        Notice::Stopping => worker.notice(WorkerNotice::Stopping),
                    }
                }
            }
            Ok(Ok((_, sender))) => {
                core.counters()
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
                worker.stop_for(crate::control::ExitReason::Watchdog);
                worker.notice(WorkerNotice::Failed(format!(
                    "watchdog: no WATCHDOG=1 for {timeout:?}"
                )));
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
