//! What a primary keeps for upgrades of itself: the environment of a handover, one upgrade at
//! a time, the program to start again, copies of the control and metrics sockets, and whether
//! it has handed over (and so no longer owns its socket files).

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The new primary's end of the handover channel.
pub const ENV_UPGRADE_FD: &str = "FORKLINE_UPGRADE_FD";
/// The control socket's listening fd, handed to the new primary.
pub const ENV_UPGRADE_CONTROL_FD: &str = "FORKLINE_UPGRADE_CONTROL_FD";
/// The metrics endpoint's listening fd, handed to the new primary.
pub const ENV_UPGRADE_METRICS_FD: &str = "FORKLINE_UPGRADE_METRICS_FD";

/// The environment variables of a handover, never passed on to workers.
pub(crate) const UPGRADE_ENV: [&str; 3] = [
    ENV_UPGRADE_FD,
    ENV_UPGRADE_CONTROL_FD,
    ENV_UPGRADE_METRICS_FD,
];

/// What the old primary keeps for upgrades.
pub(crate) struct Upgrades {
    /// One upgrade at a time.
    pub lock: tokio::sync::Mutex<()>,
    /// The program to start again and its arguments, as this primary was started.
    pub program: Option<(PathBuf, Vec<OsString>)>,
    /// Copies of the control and metrics listening sockets, for the new primary.
    pub control: Mutex<Option<OwnedFd>>,
    pub metrics: Mutex<Option<OwnedFd>>,
    /// Clear in a new primary until it has taken over: the files are still its predecessor's.
    pub owns_files: AtomicBool,
    /// True once a new primary took over: the control and metrics servers stop accepting, and
    /// the files the new one serves are not removed at exit.
    pub handover: tokio::sync::watch::Sender<bool>,
}

impl Upgrades {
    /// Remembers the program this process runs (its path now, before a deploy replaces the
    /// file, and its arguments).
    pub(crate) fn new() -> Upgrades {
        let program = std::env::current_exe().ok().map(|exe| {
            // A binary deleted since start shows as "PATH (deleted)": the path is what counts.
            let text = exe.as_os_str().to_string_lossy();
            let path = match text.strip_suffix(" (deleted)") {
                Some(path) => PathBuf::from(path),
                None => exe,
            };
            (path, std::env::args_os().skip(1).collect())
        });
        Upgrades {
            lock: tokio::sync::Mutex::new(()),
            program,
            control: Mutex::new(None),
            metrics: Mutex::new(None),
            owns_files: AtomicBool::new(true),
            handover: tokio::sync::watch::channel(false).0,
        }
    }

    /// Keeps a copy of the control socket's listener for a new primary.
    pub(crate) fn keep_control(&self, fd: OwnedFd) {
        *self.control.lock().unwrap() = Some(fd);
    }

    /// Keeps a copy of the metrics endpoint's listener for a new primary.
    #[cfg_attr(not(feature = "axum"), allow(dead_code))] // used by `/metrics`
    pub(crate) fn keep_metrics(&self, fd: OwnedFd) {
        *self.metrics.lock().unwrap() = Some(fd);
    }

    /// True once a new primary took over.
    pub(crate) fn handed_over(&self) -> bool {
        *self.handover.borrow()
    }

    /// True when this primary's socket files (the control socket, Unix listeners) are its own
    /// to remove at exit: not once handed over, nor in a new primary that has not taken over.
    pub(crate) fn owns_files(&self) -> bool {
        self.owns_files.load(Ordering::Relaxed) && !self.handed_over()
    }
}
