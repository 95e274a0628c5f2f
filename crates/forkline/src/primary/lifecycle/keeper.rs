//! The keeper: one small process per cluster that SIGKILLs every worker's process group once the
//! primary is gone, however it went (SIGKILL included).
//!
//! Workers get PR_SET_PDEATHSIG, but that reaches only the process the primary started, not what
//! it started in turn (`sh -c 'python3 app.py'` would leave python running). Each worker runs in
//! its own process group, and the keeper kills those groups. It is a plain `fork` of the primary
//! (no helper binary), set up and run by `sys::fork_keeper`; this module is its safe face.
//!
//! The primary talks to it over a SOCK_SEQPACKET pair: one 4-byte packet per change (`+pgid`
//! watch, `-pgid` forget), sent without blocking. The keeper holds no copy of the primary's end,
//! so when the primary exits or is killed, the kernel closes that end, the keeper reads
//! end-of-file, kills every group still watched, and exits.
//!
//! What it does not cover: a process that leaves its group (`setsid`, `setpgid`, a shell with
//! job control) escapes it; a group started but not yet watched when the primary dies is
//! missed; and a keeper that is itself SIGKILLed or stopped does nothing (`Keeper::exited`
//! tells). Only a cgroup would close all three.

// Not wired into the spawn path yet (the lifecycle rewrite will call it).

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tracing::debug;

use crate::sys;

/// How long dropping a [`Keeper`] waits for the keeper to kill its groups and exit.
const EXIT_WAIT: Duration = Duration::from_secs(2);

/// The primary's handle on its keeper process.
///
/// The keeper is a child of the primary that no one else reaps: the `Keeper` reaps it, in
/// [`Keeper::exited`] and when dropped. Its pid therefore belongs in the orphan reaper's
/// [`Registry`](crate::primary::lifecycle::reaper::Registry) for as long as the `Keeper` lives:
///
/// ```text
/// let keeper = {
///     let mut guard = registry.lock();
///     let keeper = Keeper::start()?;
///     guard.insert(keeper.pid());
///     keeper
/// };
/// // ... and at the end, after the keeper has been reaped:
/// let pid = keeper.pid();
/// drop(keeper);
/// registry.remove(pid);
/// ```
///
/// Dropping the `Keeper` shuts its socket down, which the keeper takes exactly as the primary's
/// death: it kills every group still watched. Forget the groups that should survive first.
pub(crate) struct Keeper {
    /// The primary's end of the socket pair (CLOEXEC: workers never inherit it).
    sock: OwnedFd,
    pid: u32,
    /// Whether the keeper has been reaped, after which its pid is never waited for again.
    reaped: Mutex<bool>,
}

impl Keeper {
    /// Forks the keeper. Call once per cluster, before any worker starts.
    ///
    /// Blocks for no longer than a `fork`. Fails if the socket pair or the fork fails.
    pub(crate) fn start() -> io::Result<Keeper> {
        let (primary_end, keeper_end) = sys::seqpacket_pair()?;
        let pid = sys::fork_keeper(keeper_end.as_fd())?;
        // The keeper has its own copy now; the primary holds only its end.
        drop(keeper_end);
        debug!(pid, "keeper started");
        Ok(Keeper {
            sock: primary_end,
            pid,
            reaped: Mutex::new(false),
        })
    }

    /// Adds a process group the keeper kills when the primary is gone. Never blocks, never
    /// panics (best effort; an error is logged at debug level).
    ///
    /// Refuses 0, 1, numbers beyond `i32::MAX` and the primary's own process group. Watch a
    /// group as soon as its leader is spawned (the group exists once the spawn returns); the
    /// keeper holds at most `sys::KEEPER_MAX_GROUPS` groups.
    pub(crate) fn watch(&self, pgid: u32) {
        self.send(pgid, true);
    }

    /// Removes it (the group is gone).
    ///
    /// Forget a group only once it is empty (its leader reaped and the group signalled), and
    /// promptly: a group number left watched after the group is gone could, after pid
    /// wrap-around, name someone else's group by the time the primary dies.
    pub(crate) fn forget(&self, pgid: u32) {
        self.send(pgid, false);
    }

    /// The keeper's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the keeper process has exited (it was killed, say), reaping it if it has. Once
    /// true, always true, and the keeper's pid is never waited for again. Never blocks.
    pub(crate) fn exited(&self) -> bool {
        let mut reaped = self.reaped.lock().unwrap_or_else(PoisonError::into_inner);
        if *reaped {
            return true;
        }
        match waitpid(Pid::from_raw(self.pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => false,
            Ok(status) => {
                debug!(pid = self.pid, ?status, "keeper exited");
                *reaped = true;
                true
            }
            Err(Errno::ECHILD) => {
                // Reaped by someone else (its pid was not registered with the orphan reaper?).
                debug!(pid = self.pid, "keeper already reaped elsewhere");
                *reaped = true;
                true
            }
            Err(error) => {
                debug!(pid = self.pid, %error, "cannot wait for the keeper");
                false
            }
        }
    }

    fn send(&self, pgid: u32, watch: bool) {
        let verb = if watch { "watch" } else { "forget" };
        let group = match i32::try_from(pgid) {
            Ok(group) if group > 1 && group != nix::unistd::getpgrp().as_raw() => group,
            _ => {
                debug!(pgid, "keeper: refusing to {verb} this process group");
                return;
            }
        };
        let message = if watch { group } else { -group };
        // MSG_DONTWAIT | MSG_NOSIGNAL: never blocks, never raises SIGPIPE.
        if let Err(error) = sys::send_packet(self.sock.as_fd(), &message.to_ne_bytes(), &[], true) {
            debug!(pgid, %error, keeper = self.pid, "keeper: cannot {verb} process group");
            if matches!(
                error.raw_os_error(),
                Some(libc::EPIPE | libc::ECONNREFUSED | libc::ECONNRESET)
            ) {
                // The keeper is gone: reap it rather than leave a zombie.
                self.exited();
            }
        }
    }
}

impl Drop for Keeper {
    /// Shuts the socket down (the keeper kills every group still watched, as on the primary's
    /// death), then waits up to [`EXIT_WAIT`] for the keeper to exit and reaps it.
    fn drop(&mut self) {
        // Shut down rather than merely close: a child that another thread forked and that has
        // not reached exec yet may hold a copy of this end, and the keeper must see EOF now.
        let _ = nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        let deadline = Instant::now() + EXIT_WAIT;
        let mut pause = Duration::from_millis(1);
        while !self.exited() {
            if Instant::now() >= deadline {
                debug!(pid = self.pid, "keeper still running; left unreaped");
                return;
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command};

    use nix::sys::signal::{kill, killpg, Signal};

    use super::*;
    use crate::primary::lifecycle::reaper::tests::{is_isolated, isolated_command};
    use crate::sys::KEEPER_NAME;

    /// Generous: the machine is small and shared.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// `(pid, state)` of every process in process group `pgid`, from /proc.
    fn group(pgid: u32) -> Vec<(u32, char)> {
        let mut found = Vec::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return found;
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid pgrp ...": comm may hold anything, so split after its ')'.
            let Some(rest) = stat.rfind(')').map(|at| &stat[at + 1..]) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.get(2).and_then(|p| p.parse::<u32>().ok()) == Some(pgid) {
                let state = fields.first().and_then(|s| s.chars().next()).unwrap_or('?');
                found.push((pid, state));
            }
        }
        found
    }

    /// The members of `pgid` that are still running (a zombie is dead, only not yet reaped).
    fn alive(pgid: u32) -> Vec<u32> {
        group(pgid)
            .into_iter()
            .filter(|&(_, state)| state != 'Z' && state != 'X')
            .map(|(pid, _)| pid)
            .collect()
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A shell and two sleeps in a process group of their own; returns once all three run.
    fn spawn_group() -> Child {
        let child = Command::new("sh")
            .args(["-c", "sleep 300 & sleep 300 & wait"])
            .process_group(0)
            .spawn()
            .expect("spawn sh");
        let pgid = child.id();
        wait_until("the group has its three processes", || {
            alive(pgid).len() == 3
        });
        child
    }

    /// Kills what is left of `child`'s group and reaps `child`. The sleeps, reparented to the
    /// test binary's reaper (this process is never a subreaper: the reaper tests run in
    /// processes of their own), are not ours to reap.
    fn finish(mut child: Child) -> std::process::ExitStatus {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        child.wait().expect("wait for sh")
    }

    #[test]
    fn dropping_the_keeper_kills_every_watched_group() {
        let keeper = Keeper::start().expect("start the keeper");
        let child = spawn_group();
        let pgid = child.id();
        keeper.watch(pgid);
        // As the primary's death would: the keeper sees its socket's end-of-file.
        drop(keeper);
        wait_until("every process of the group is gone", || {
            alive(pgid).is_empty()
        });
        let status = finish(child);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    }

    #[test]
    fn a_forgotten_group_is_not_killed() {
        let keeper = Keeper::start().expect("start the keeper");
        let spared = spawn_group();
        let killed = spawn_group();
        keeper.watch(spared.id());
        keeper.watch(killed.id());
        keeper.forget(spared.id());
        drop(keeper);
        // The keeper read the forget before the end-of-file (one ordered stream), so once it has
        // killed the other group it is done, and the forgotten one must still be whole.
        wait_until("the watched group is gone", || {
            alive(killed.id()).is_empty()
        });
        assert_eq!(
            alive(spared.id()).len(),
            3,
            "the forgotten group was touched"
        );
        assert_eq!(finish(killed).signal(), Some(libc::SIGKILL));
        assert_eq!(finish(spared).signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn the_keeper_is_set_up_apart_from_the_primary() {
        let keeper = Keeper::start().expect("start the keeper");
        let pid = keeper.pid();
        let comm = format!("/proc/{pid}/comm");
        wait_until("the keeper has finished its setup", || {
            std::fs::read_to_string(&comm)
                .is_ok_and(|name| KEEPER_NAME.to_str().is_ok_and(|k| name.trim() == k))
        });
        // Its own process group.
        let pgid = nix::unistd::getpgid(Some(Pid::from_raw(pid as i32))).expect("getpgid");
        assert_eq!(pgid.as_raw(), pid as i32);
        // Exactly 0-2 on /dev/null and its socket on 3: nothing of the primary's, its end of
        // the pair included.
        let mut fds: Vec<(i32, String)> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read the keeper's fds")
            .flatten()
            .map(|entry| {
                let target = std::fs::read_link(entry.path()).unwrap_or_default();
                let fd = entry.file_name().to_string_lossy().parse().unwrap_or(-1);
                (fd, target.to_string_lossy().into_owned())
            })
            .collect();
        fds.sort();
        assert_eq!(fds.len(), 4, "{fds:?}");
        for (fd, target) in &fds[..3] {
            assert_eq!(target, "/dev/null", "fd {fd}: {fds:?}");
        }
        assert_eq!(fds[3].0, 3, "{fds:?}");
        assert!(fds[3].1.starts_with("socket:"), "{fds:?}");
        // Signals: the listed ones ignored, none blocked.
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let mask = |name: &str| {
            let line = status
                .lines()
                .find(|line| line.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"));
            u64::from_str_radix(line[name.len()..].trim(), 16).expect("a hex mask")
        };
        let ignored = mask("SigIgn:");
        for signal in sys::KEEPER_IGNORED_SIGNALS {
            assert_ne!(
                ignored & (1 << (signal - 1)),
                0,
                "signal {signal} not ignored"
            );
        }
        assert_eq!(mask("SigBlk:"), 0);
        // No handler but the C library's own, on the signals it reserves (32 and 33 with
        // glibc), which it does not let anyone change and which ignore outside senders.
        let reserved = (1u64 << 31) | (1 << 32);
        assert_eq!(mask("SigCgt:") & !reserved, 0);
        // And so a stop signal aimed at the primary (or its group) does not stop it.
        for signal in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            kill(Pid::from_raw(pid as i32), signal).expect("signal the keeper");
        }
        std::thread::sleep(Duration::from_millis(100));
        assert!(!keeper.exited(), "the keeper died of an ignored signal");
    }

    #[test]
    fn a_killed_keeper_is_reaped_and_watch_stays_harmless() {
        let keeper = Keeper::start().expect("start the keeper");
        assert!(!keeper.exited());
        kill(Pid::from_raw(keeper.pid() as i32), Signal::SIGKILL).expect("kill the keeper");
        wait_until("the killed keeper is reaped", || keeper.exited());
        // Sending to a dead keeper fails quietly.
        keeper.watch(12345);
        keeper.forget(12345);
        assert!(keeper.exited());
        let started = Instant::now();
        drop(keeper);
        assert!(
            started.elapsed() < EXIT_WAIT,
            "drop waited for a reaped keeper"
        );
    }

    #[test]
    fn a_sigkilled_primary_takes_its_groups_with_it() {
        const NAME: &str = "a_sigkilled_primary_takes_its_groups_with_it";
        if is_isolated(NAME) {
            // The "primary": start the keeper and a watched group, say so, and wait to be
            // killed.
            let keeper = Keeper::start().expect("start the keeper");
            // Never waited for: this process is SIGKILLed, and the keeper kills the group.
            #[allow(clippy::zombie_processes)]
            let child = spawn_group();
            keeper.watch(child.id());
            println!("pgid {} keeper {}", child.id(), keeper.pid());
            std::thread::sleep(Duration::from_secs(300));
            unreachable!("the primary was not killed");
        }
        let mut primary = isolated_command(module_path!(), NAME)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run the test binary");
        let mut stdout = std::io::BufReader::new(primary.stdout.take().expect("stdout"));
        let mut line = String::new();
        let (pgid, keeper) = loop {
            line.clear();
            let read = std::io::BufRead::read_line(&mut stdout, &mut line).expect("read");
            assert_ne!(read, 0, "the primary ended without starting its group");
            // The line may follow libtest's "test NAME ... " on the same line.
            let Some(at) = line.find("pgid ") else {
                continue;
            };
            let words: Vec<&str> = line[at..].split_whitespace().collect();
            if let ["pgid", pgid, "keeper", keeper] = words[..] {
                break (
                    pgid.parse::<u32>().expect("pgid"),
                    keeper.parse::<u32>().expect("pid"),
                );
            }
        };
        assert_eq!(alive(pgid).len(), 3);
        kill(Pid::from_raw(primary.id() as i32), Signal::SIGKILL).expect("kill the primary");
        let status = primary.wait().expect("wait for the primary");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        wait_until("every process of the group is gone", || {
            alive(pgid).is_empty()
        });
        // Its work done, the keeper exits (reparented, it is not ours to reap).
        wait_until("the keeper is gone", || {
            std::fs::read_to_string(format!("/proc/{keeper}/stat"))
                .map_or(true, |stat| !stat.contains(") S") && !stat.contains(") R"))
        });
    }
}
