//! Signals to a process or to a process group, where one that is already gone is no error.

use std::io;

/// Sends `signal` to process `pid`; `ESRCH` (already gone) is not an error.
pub(crate) fn signal_pid(pid: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Sends `signal` to every process of the group `pgid`; `ESRCH` (none left) is not an error.
pub(crate) fn signal_group(pgid: u32, signal: nix::sys::signal::Signal) -> io::Result<()> {
    match nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid as i32), signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
