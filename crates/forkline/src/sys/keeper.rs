//! The keeper process (`primary::keeper`): a plain fork of the primary, with no exec, that kills
//! the worker process groups it was told about once the primary's end of its socket closes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

/// The keeper's socket, once it has moved it.
const KEEPER_FD: RawFd = 3;

/// Slots in the keeper's table of watched process groups (the keeper cannot allocate); a watch
/// beyond it is dropped.
pub(super) const KEEPER_MAX_GROUPS: usize = 4096;

/// The keeper's command name (`/proc/PID/comm`, `ps`), set once its setup is complete.
pub(crate) const KEEPER_NAME: &std::ffi::CStr = c"forkline-keeper";

/// Signals the keeper ignores: job control, terminal hang-up, the stop and control signals an
/// operator or a supervisor sends to the primary (or to its process group), and SIGPIPE.
pub(crate) const KEEPER_IGNORED_SIGNALS: [libc::c_int; 9] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPIPE,
];

/// Forks the keeper and returns its pid. `sock` is the keeper's end of a SOCK_SEQPACKET pair;
/// the child keeps it (as fd 3) and closes every other descriptor it inherited, the primary's
/// end included, so the keeper sees end-of-file as soon as the primary's end is closed or shut
/// down. The caller closes its copy of `sock` after this returns.
///
/// The child never returns from here: it runs [`keeper_main`], which makes only
/// async-signal-safe system calls (the primary is multi-threaded), and ends in `_exit`.
pub(crate) fn fork_keeper(sock: BorrowedFd<'_>) -> io::Result<u32> {
    use nix::sys::signal::{pthread_sigmask, SigSet, SigmaskHow};

    let sock = sock.as_raw_fd();
    let primary_pgid = nix::unistd::getpgrp().as_raw();
    // Block every signal across the fork, so that no handler of the primary's (tokio's, which
    // writes to the primary's wake-up pipe) can run in the child before the child has reset the
    // dispositions. Signals sent to the process meanwhile go to the primary's other threads or
    // wait, pending, until the mask is restored.
    let mut saved = SigSet::empty();
    pthread_sigmask(
        SigmaskHow::SIG_SETMASK,
        Some(&SigSet::all()),
        Some(&mut saved),
    )?;
    // SAFETY: the child runs only `keeper_main`, which makes async-signal-safe system calls on
    // integers and stack arrays (no allocation, no locks, no std I/O, no panics) and never
    // returns (it ends in `_exit`), so the state the fork copied from the primary's other
    // threads (locks held, allocator state) is never touched in the child.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: this is the child of `fork`, as `keeper_main` requires.
        unsafe { keeper_main(sock, primary_pgid) }
    }
    let fork_error = io::Error::last_os_error();
    // Cannot fail: the arguments are valid (and the mask was set the same way just above).
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&saved), None);
    if pid < 0 {
        return Err(fork_error);
    }
    Ok(pid as u32)
}

/// The keeper's whole life, in the child of [`fork_keeper`]. `sock` is its socket, and
/// `primary_pgid` the primary's process group at fork time (never killed).
///
/// Setup: its own process group; the signals of [`KEEPER_IGNORED_SIGNALS`] ignored and every
/// other catchable one at its default action; stdin, stdout and stderr on /dev/null; every other
/// descriptor closed except `sock`, moved to fd 3; cwd `/`; the name [`KEEPER_NAME`]; an empty
/// signal mask. Then it reads 4-byte packets (a native-endian `i32`: `+pgid` watches a group,
/// `-pgid` forgets it) into a fixed table; on end-of-file or an error other than EINTR it
/// SIGKILLs every watched group and exits with status 0.
///
/// # Safety
///
/// Call only in the child of `fork`, and nowhere else: it takes over the process and exits it.
unsafe fn keeper_main(sock: RawFd, primary_pgid: libc::pid_t) -> ! {
    // SAFETY: everything in this block is a raw system call (or a libc helper on plain memory,
    // such as sigemptyset) on integers and pointers to live stack values or static C strings:
    // async-signal-safe, as a forked child of a multi-threaded process requires. Nothing
    // allocates, locks or formats, and indexing goes through `get`/iterators, so nothing can
    // panic; the block ends in `_exit`.
    unsafe {
        // Its own process group: a signal to the primary's group (Ctrl-C on a terminal, a
        // supervisor's killpg) does not reach it.
        libc::setpgid(0, 0);

        // Signal dispositions: handlers are inherited across fork, and the primary's would
        // write to descriptors that are about to be closed (or reused).
        let mut action: libc::sigaction = std::mem::zeroed();
        libc::sigemptyset(&mut action.sa_mask);
        for signal in 1..=64 {
            if signal == libc::SIGKILL || signal == libc::SIGSTOP {
                continue;
            }
            action.sa_sigaction = if KEEPER_IGNORED_SIGNALS.contains(&signal) {
                libc::SIG_IGN
            } else {
                libc::SIG_DFL
            };
            // Fails harmlessly (EINVAL) for the signals the C library reserves.
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }

        // Descriptors: the socket to fd 3 (dup2 replaces whatever was there, possibly the
        // primary's end), then everything above 3 closed, the primary's end included.
        if sock != KEEPER_FD && libc::dup2(sock, KEEPER_FD) < 0 {
            libc::_exit(1);
        }
        let first = (KEEPER_FD + 1) as libc::c_uint;
        if libc::syscall(
            libc::SYS_close_range,
            first,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) != 0
        {
            // No close_range (Linux < 5.9): close up to the descriptor limit, bounded.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let mut last: libc::c_int = 1 << 20;
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0
                && limit.rlim_cur < last as libc::rlim_t
            {
                last = limit.rlim_cur as libc::c_int;
            }
            let mut fd = first as libc::c_int;
            while fd < last {
                libc::close(fd);
                fd += 1;
            }
        }
        // stdin, stdout and stderr to /dev/null (this also replaces a copy of the sockets that
        // sat on 0-2); without /dev/null, closed.
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
        for target in 0..3 {
            if null < 0 {
                libc::close(target);
            } else if null != target {
                libc::dup2(null, target);
            }
        }
        if null > 2 {
            libc::close(null);
        }
        // Do not pin the primary's working directory (a mount point, say).
        libc::chdir(c"/".as_ptr());
        libc::prctl(libc::PR_SET_NAME, KEEPER_NAME.as_ptr(), 0, 0, 0);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());

        let me = libc::getpid();
        let mut groups: [libc::pid_t; KEEPER_MAX_GROUPS] = [0; KEEPER_MAX_GROUPS];
        let mut len = 0usize;
        loop {
            let mut message = [0u8; 4];
            let got = libc::recv(KEEPER_FD, message.as_mut_ptr().cast(), message.len(), 0);
            if got == 4 {
                let value = i32::from_ne_bytes(message);
                if value > 1 {
                    // Watch. Never process group 1 (kill(-1) is every process), its own group
                    // or the primary's.
                    let known = groups.iter().take(len).any(|&g| g == value);
                    if !known && value != me && value != primary_pgid {
                        if let Some(slot) = groups.get_mut(len) {
                            *slot = value;
                            len += 1;
                        }
                    }
                } else if value < 0 && value != i32::MIN {
                    // Forget: the last entry takes its place.
                    let group = -value;
                    if let Some(at) = groups.iter().take(len).position(|&g| g == group) {
                        len -= 1;
                        let last = groups.get(len).copied().unwrap_or(0);
                        if let Some(slot) = groups.get_mut(at) {
                            *slot = last;
                        }
                    }
                }
            } else if got > 0 || (got < 0 && *libc::__errno_location() == libc::EINTR) {
                // A packet of another size (never sent by the primary), or a signal: go on.
            } else {
                // 0: end-of-file, the primary's end is closed (the primary exited or was
                // killed) or shut down. Negative: the socket is unusable.
                break;
            }
        }
        for &group in groups.iter().take(len) {
            libc::kill(-group, libc::SIGKILL);
        }
        libc::_exit(0)
    }
}
