//! Replacing the primary itself (`Cluster::upgrade`, SIGUSR2, the control socket's `upgrade`):
//! the running primary starts its program again from disk as a new primary and hands it the
//! listening sockets, the control socket and the metrics socket; only once the new primary's
//! workers are all ready does the old one stop accepting, drain its workers and exit. A new
//! primary that exits or is not ready in time is stopped, and the old one carries on.
//!
//! The two talk over a stream socket pair whose end the new primary finds in
//! `FORKLINE_UPGRADE_FD`: the new one writes `ready`, the old one stops accepting and writes
//! `go`, and only then does the new one serve the control and metrics sockets and accept in
//! round-robin and proxy modes. The listening sockets arrive by the systemd convention (fds
//! from 3, `LISTEN_FDS`, `LISTEN_FDNAMES`), but with `FORKLINE_UPGRADE_FD` in place of
//! `LISTEN_PID`, which the old primary cannot know before the new one exists.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::error::{Error, Result};
use crate::primary::core::Core;
use crate::primary::event::Event;
use crate::primary::ops::upgrade_state::{
    ENV_UPGRADE_CONTROL_FD, ENV_UPGRADE_FD, ENV_UPGRADE_METRICS_FD, UPGRADE_ENV,
};
use crate::primary::{lifecycle::spawner, task};
use crate::sys;

/// First fd of the listening sockets, as in systemd.
const FIRST_FD: RawFd = 3;

/// The listening sockets bound up front (or passed by the service manager), each with its
/// `LISTEN_FDNAMES` name: what a new primary (`upgrade`) or a service manager's fd store
/// needs to serve the same ports. In reuseport mode, one socket of each group.
pub(crate) fn listening_sockets(core: &Core) -> Vec<(String, std::sync::Arc<OwnedFd>)> {
    core.prebound()
        .iter()
        .enumerate()
        .filter_map(|(index, listener)| {
            let socket = listener.socket_to_pass()?;
            Some((
                crate::primary::lifecycle::spawn::fd_name(core, index, listener),
                socket,
            ))
        })
        .collect()
}

/// Replaces this primary with a new one started from the same program file and arguments
/// (what SIGUSR2 and `forkline upgrade` do). The new primary gets the listening sockets,
/// starts its own workers and, once they are all ready, takes over; this one then stops
/// accepting, drains its workers gracefully and stops (`Cluster::wait` returns). Returns
/// the new primary's pid.
///
/// If the new primary exits, or is not ready within `upgrade_timeout`, it is stopped and
/// this one carries on: `Error::UpgradeFailed` says why. One upgrade at a time; refused
/// as PID 1 (a container's init cannot hand over: roll the container instead).
pub(crate) async fn upgrade(core: &Core) -> Result<u32> {
    let failed = |reason: String| Error::UpgradeFailed { reason };
    let upgrades = &core.upgrades();
    let Ok(_one_at_a_time) = upgrades.lock.try_lock() else {
        return Err(failed("an upgrade is already in progress".into()));
    };
    if core.is_stopping() {
        return Err(Error::ShutDown);
    }
    if std::process::id() == 1 {
        return Err(failed(
            "the primary is PID 1, which cannot hand over; replace the container instead".into(),
        ));
    }
    let Some((program, args)) = upgrades.program.clone() else {
        return Err(failed("cannot find this program's executable".into()));
    };
    tracing::info!(program = %program.display(), "upgrade: starting a new primary");
    let result = start_successor(core, &program, &args).await;
    match result {
        Ok(pid) => {
            tracing::info!(pid, "upgrade: the new primary is ready and takes over");
            core.emit(Event::Upgraded { pid });
            Ok(pid)
        }
        Err(reason) => {
            tracing::error!("upgrade failed: the new primary {reason}; this one carries on");
            core.emit(Event::UpgradeFailed {
                reason: reason.clone(),
            });
            Err(failed(format!("the new primary {reason}")))
        }
    }
}

/// Starts the new primary and waits for its `ready`; on success hands over (this primary stops
/// accepting and begins its graceful stop) and returns its pid, else stops it and says why.
async fn start_successor(
    core: &Core,
    program: &std::path::Path,
    args: &[OsString],
) -> std::result::Result<u32, String> {
    let io_error = |what: &str, e: io::Error| format!("could not be started: {what}: {e}");
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(|e| io_error("socket pair", e))?;
    let mut placed: Vec<(OwnedFd, RawFd)> = Vec::new();
    let mut names = Vec::new();
    for (name, socket) in listening_sockets(core) {
        let fd = sys::dup_cloexec(socket.as_fd()).map_err(|e| io_error("dup", e))?;
        placed.push((fd, FIRST_FD + placed.len() as RawFd));
        names.push(name);
    }
    let mut command = std::process::Command::new(program);
    command.args(args);
    command.env("LISTEN_FDS", placed.len().to_string());
    command.env("LISTEN_FDNAMES", names.join(":"));
    command.env_remove("LISTEN_PID");
    // A handover this process got itself is not the new primary's.
    for var in UPGRADE_ENV {
        command.env_remove(var);
    }
    for (key, value) in &core.opts().upgrade_env {
        command.env(key, value);
    }
    let mut next = FIRST_FD + placed.len() as RawFd;
    let mut place = |fd: OwnedFd, var: &str, command: &mut std::process::Command| {
        command.env(var, next.to_string());
        placed.push((fd, next));
        next += 1;
    };
    let upgrades = &core.upgrades();
    for (kept, var) in [
        (&upgrades.control, ENV_UPGRADE_CONTROL_FD),
        (&upgrades.metrics, ENV_UPGRADE_METRICS_FD),
    ] {
        let copy = kept
            .lock()
            .unwrap()
            .as_ref()
            .map(|fd| sys::dup_cloexec(fd.as_fd()));
        if let Some(fd) = copy.transpose().map_err(|e| io_error("dup", e))? {
            place(fd, var, &mut command);
        }
    }
    place(OwnedFd::from(theirs), ENV_UPGRADE_FD, &mut command);
    sys::place_fds(&mut command, placed).map_err(|e| io_error("fds", e))?;
    let mut child = spawner::spawn(command)
        .await
        .map_err(|e| format!("could not be started: {}: {e}", program.display()))?;
    let pid = child.id().unwrap_or(0);
    core.events().emit(Event::UpgradeStarted { pid });
    ours.set_nonblocking(true)
        .map_err(|e| io_error("socket pair", e))?;
    let mut channel = UnixStream::from_std(ours).map_err(|e| io_error("socket pair", e))?;

    let timeout = core.opts().upgrade_timeout;
    let outcome = tokio::select! {
        ready = read_line(&mut channel) => match ready {
            Ok(line) if line == "ready" => Ok(()),
            Ok(line) => Err(format!("(pid {pid}) said {line:?} instead of ready")),
            // It is exiting: its exit status says more than the closed channel.
            Err(_) => match tokio::time::timeout(Duration::from_secs(5), child.wait()).await {
                Ok(Ok(status)) => Err(format!("(pid {pid}) {}", describe_exit(status))),
                _ => Err(format!("(pid {pid}) closed the handover channel")),
            },
        },
        status = child.wait() => Err(match status {
            Ok(status) => format!("(pid {pid}) {}", describe_exit(status)),
            Err(e) => format!("(pid {pid}) could not be waited for: {e}"),
        }),
        _ = tokio::time::sleep(timeout) => {
            Err(format!("(pid {pid}) was not ready within {}", humantime::format_duration(timeout)))
        }
    };
    if let Err(reason) = outcome {
        task::spawn(
            "upgrade-stop",
            stop_failed(child, core.opts().graceful_timeout),
        );
        return Err(reason);
    }
    // Hand over: from here on the new primary serves; this one only finishes what it took.
    upgrades.handover.send_replace(true);
    finish_accepted(core).await;
    if channel.write_all(b"go\n").await.is_err() {
        tracing::warn!(
            pid,
            "upgrade: the new primary went away during the handover"
        );
    }
    crate::primary::lifecycle::shutdown::graceful(core);
    // Not waited for: it outlives this process, and its new parent reaps it.
    drop(child);
    Ok(pid)
}

/// Stops accepting and waits (up to the graceful timeout) until every connection this primary
/// accepted has reached a worker (round-robin) or finished its relay (proxy), while the
/// workers still serve: a graceful stop that began now would drop those.
async fn finish_accepted(core: &Core) {
    core.stop_accepting().send_replace(true);
    let deadline = tokio::time::Instant::now() + core.opts().graceful_timeout;
    let busy = || core.dispatcher().has_pending() || core.proxy().has_open_relays();
    // Twice idle in a row: a relay between its accept and its count is not missed.
    let mut idle = 0;
    while idle < 2 && tokio::time::Instant::now() < deadline {
        idle = if busy() { 0 } else { idle + 1 };
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one line (without its newline) from the handover channel.
async fn read_line(channel: &mut UnixStream) -> io::Result<String> {
    let mut line = String::new();
    let read = BufReader::new(channel).read_line(&mut line).await?;
    if read == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(line.trim_end().to_string())
}

/// `exited with code 1` / `was killed by signal 9`, as a failed replacement says it.
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    crate::primary::event::ReplaceFailure::Exited {
        code: status.code(),
        signal: status.signal(),
    }
    .to_string()
}

/// Stops a new primary that failed: SIGTERM (it stops its workers), SIGKILL after `grace`.
async fn stop_failed(mut child: tokio::process::Child, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

/// What a new primary was handed by the old one.
pub(crate) struct Successor {
    channel: std::os::unix::net::UnixStream,
    /// The control socket's listener, if the old primary served one.
    pub control: Option<OwnedFd>,
    /// The metrics endpoint's listener, if the old primary served one.
    pub metrics: Option<OwnedFd>,
    /// The listening sockets (when the caller did not take them already), and their names.
    pub listeners: Vec<OwnedFd>,
}

impl Successor {
    /// The handover, when this process was started by an upgrade; `None` otherwise. The fds
    /// are adopted (close-on-exec) once: a second call finds nothing.
    pub(crate) fn take() -> Option<Successor> {
        static TAKEN: AtomicBool = AtomicBool::new(false);
        let fd = env_fd(ENV_UPGRADE_FD)?;
        if TAKEN.swap(true, Ordering::SeqCst) {
            return None;
        }
        let channel = sys::adopt_inherited_fd(fd).ok()?;
        let adopt = |var| env_fd(var).and_then(|fd| sys::adopt_inherited_fd(fd).ok());
        // LISTEN_FDS is left for the caller when it took the sockets itself (and removed it).
        let count: RawFd = match std::env::var("LISTEN_PID") {
            Ok(_) => 0,
            Err(_) => std::env::var("LISTEN_FDS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        };
        let listeners = (FIRST_FD..FIRST_FD + count)
            .filter_map(|fd| sys::adopt_inherited_fd(fd).ok())
            .collect();
        Some(Successor {
            channel: channel.into(),
            control: adopt(ENV_UPGRADE_CONTROL_FD),
            metrics: adopt(ENV_UPGRADE_METRICS_FD),
            listeners,
        })
    }

    /// Tells the old primary this one is ready, and waits until it has stopped accepting
    /// (`go`), or is gone: either way this one serves from then on.
    pub(crate) async fn take_over(self) {
        let Ok(()) = self.channel.set_nonblocking(true) else {
            return;
        };
        let Ok(mut channel) = UnixStream::from_std(self.channel) else {
            return;
        };
        if channel.write_all(b"ready\n").await.is_err() {
            return;
        }
        match read_line(&mut channel).await {
            Ok(line) if line == "go" => tracing::info!("upgrade: took over from the old primary"),
            _ => tracing::warn!("upgrade: the old primary went away; taking over"),
        }
    }
}

/// The fd number in environment variable `var`, if set.
fn env_fd(var: &str) -> Option<RawFd> {
    std::env::var(var).ok()?.parse().ok().filter(|fd| *fd >= 0)
}

/// In a new primary: waits until its workers are ready, then takes over from the old one, and
/// only then runs `serve` (the control socket, metrics, accepting).
pub(crate) fn take_over_when_ready(
    core: &Core,
    successor: Successor,
    serve: impl FnOnce() + Send + 'static,
) {
    core.upgrades().owns_files.store(false, Ordering::Relaxed);
    let core = core.arc();
    task::spawn("upgrade-take-over", async move {
        loop {
            let changed = core.changed().notified();
            if core.all_ready() {
                break;
            }
            if core.is_stopping() {
                return;
            }
            changed.await;
        }
        successor.take_over().await;
        core.upgrades().owns_files.store(true, Ordering::Relaxed);
        serve();
    });
}
