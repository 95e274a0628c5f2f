//! Setting up a child process between fork and exec (`pre_exec`): its descriptors placed at
//! fixed numbers, its death signal, its signal mask. Workers (`primary::spawn`) and a new
//! primary taking over (`primary::upgrade`) are started so.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;

/// Most fds placed in one child (listeners plus the IPC socket); `pre_exec` cannot allocate.
const MAX_PLACED_FDS: usize = 64;

/// Arranges for `cmd`'s child, between fork and exec, to:
/// - place each `(fd, target)` at fd number `target` (dup2; the copy is not CLOEXEC),
/// - receive SIGKILL when the thread that spawned it dies (PR_SET_PDEATHSIG), and exit at once
///   if the parent is already gone by the time that is armed,
/// - start with an empty signal mask.
///
/// The spawning thread must live as long as the child should (see `primary::spawner`).
pub(crate) fn prepare_child(
    cmd: &mut std::process::Command,
    fds: Vec<(OwnedFd, RawFd)>,
) -> io::Result<()> {
    arrange_child(cmd, fds, true)
}

/// Like [`prepare_child`], for a child that must outlive this process (a new primary taking
/// over): the fds are placed and the signal mask emptied, with no death signal.
pub(crate) fn place_fds(
    cmd: &mut std::process::Command,
    fds: Vec<(OwnedFd, RawFd)>,
) -> io::Result<()> {
    arrange_child(cmd, fds, false)
}

fn arrange_child(
    cmd: &mut std::process::Command,
    fds: Vec<(OwnedFd, RawFd)>,
    die_with_parent: bool,
) -> io::Result<()> {
    if fds.len() > MAX_PLACED_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} fds to place in a worker (max {MAX_PLACED_FDS})",
                fds.len()
            ),
        ));
    }
    let parent = nix::unistd::getpid().as_raw();
    let placements: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, t)| (f.as_raw_fd(), *t)).collect();
    // The highest target; sources at or below it are first moved above it so that placing one
    // fd never clobbers the source of another.
    let ceiling = placements.iter().map(|(_, t)| *t).max().unwrap_or(0);
    // Keep the parent's copies alive until the Command is dropped (after spawn).
    let keep_alive = fds;
    // SAFETY: the closure only calls async-signal-safe syscalls (fcntl, dup2, prctl, getppid,
    // sigprocmask, _exit) on plain integers captured by value; it does not allocate or lock.
    unsafe {
        cmd.pre_exec(move || {
            let _ = &keep_alive;
            let mut moved = [0 as RawFd; MAX_PLACED_FDS];
            for (i, (src, _)) in placements.iter().enumerate() {
                let high = libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, ceiling + 1);
                if high < 0 {
                    return Err(io::Error::last_os_error());
                }
                moved[i] = high;
            }
            for (i, (_, target)) in placements.iter().enumerate() {
                if libc::dup2(moved[i], *target) < 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            if die_with_parent {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            Ok(())
        });
    }
    Ok(())
}

/// Arranges for `cmd`'s child, between fork and exec, to run on CPU `cpu` only
/// (`sched_setaffinity`); what it starts inherits that.
pub(crate) fn pin_to_cpu(cmd: &mut std::process::Command, cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is past CPU_SETSIZE"),
        ));
    }
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes one bit within it (checked
    // against CPU_SETSIZE above).
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        set
    };
    // SAFETY: the closure makes one async-signal-safe syscall on a set it owns (copied in by
    // value); it does not allocate or lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(())
}

/// The CPUs this process may run on (`sched_getaffinity`), in order.
pub(crate) fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set for the kernel to fill; its exact size is
    // passed.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        set
    };
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads one bit of the set, within CPU_SETSIZE.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}
