//! A network namespace of a test's own, shared by the library's and the CLI's integration tests
//! (the CLI's include this file by path).

use std::process::Command;

/// Runs `body` on a thread of its own inside a new network namespace whose loopback is up:
/// the sockets it opens, the processes it starts (they inherit the thread's namespace) and the
/// `net.*` sysctls it sees or sets are its own, unseen by the tests running beside it (and by
/// any other process of the machine: a `SO_REUSEPORT` port is shared by every process of the
/// same user that binds it). `None` (and a line saying why) where one cannot be made (not root,
/// no `ip`); a panic in `body` fails the caller.
pub fn in_private_netns<R: Send + 'static>(body: impl FnOnce() -> R + Send + 'static) -> Option<R> {
    let thread = std::thread::spawn(move || {
        // CLONE_NEWNET moves only this thread (not the test's other threads).
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| format!("unshare: {e}"))?;
        match Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
        {
            Ok(status) if status.success() => Ok(body()),
            Ok(status) => Err(format!("ip link set lo up: {status}")),
            Err(e) => Err(format!("ip link set lo up: {e}")),
        }
    });
    match thread.join() {
        Ok(Ok(result)) => Some(result),
        Ok(Err(why)) => {
            eprintln!("no private network namespace: {why}");
            None
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}
