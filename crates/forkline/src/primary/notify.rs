//! The systemd notify protocol served to workers: each worker gets its own datagram socket in
//! `NOTIFY_SOCKET` (so no credentials are needed to tell workers apart) and may send `READY=1`,
//! `WATCHDOG=1`, `STATUS=...` and `STOPPING=1`, one assignment per line.

use std::path::PathBuf;

use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use super::cluster::Cluster;
use super::handle::{WorkerHandle, WorkerState};

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
pub(crate) async fn serve(cluster: Cluster, worker: WorkerHandle, socket: UnixDatagram) {
    let timeout = cluster.inner.opts.worker_timeout;
    let mut last_ping = Instant::now();
    let mut buf = vec![0u8; 4096];
    let tick = timeout.map_or(Duration::from_millis(500), |t| {
        (t / 4).max(Duration::from_millis(10))
    });
    while !worker.is_dead() {
        match tokio::time::timeout(tick, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => {
                for notice in parse(&buf[..n]) {
                    match notice {
                        Notice::Ready => super::readiness::set_ready(&cluster, &worker),
                        Notice::Watchdog => last_ping = Instant::now(),
                        Notice::Status(status) => {
                            tracing::info!(worker = worker.id(), pid = worker.pid(), %status, "worker status");
                        }
                        Notice::Stopping => worker.set_state(WorkerState::Draining),
                    }
                }
            }
            Ok(Err(_)) => break,
            Err(_elapsed) => {}
        }
        if let Some(timeout) = timeout {
            if last_ping.elapsed() > timeout && !worker.is_dead() {
                super::ipc::worker_error(
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

/// The directory holding a cluster's notify sockets, removed on drop.
#[derive(Debug)]
pub(crate) struct NotifyDir {
    path: PathBuf,
}

impl NotifyDir {
    /// Creates a private directory under the runtime or temp dir (first removing those left by
    /// primaries that were killed before they could clean up).
    pub fn create() -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        remove_stale(&base);
        // Unique per cluster, even for several clusters in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = base.join(format!("forkline-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        // Marks the directory as ours, so stale-directory cleanup never touches anything else.
        std::fs::write(path.join(".forkline-notify"), b"")?;
        // Workers may run as another user (--user): they must reach their socket by name.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o711))?;
        Ok(Self { path })
    }

    /// Binds the notify socket of worker `seq`.
    pub fn bind(&self, seq: u64) -> std::io::Result<(UnixDatagram, PathBuf)> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path.join(format!("notify-{seq}.sock"));
        let _ = std::fs::remove_file(&path);
        let socket = UnixDatagram::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok((socket, path))
    }
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
