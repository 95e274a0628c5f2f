//! Orphan reaping, for a primary that runs as PID 1 (a container's init) or as a child
//! subreaper: a process whose parent dies is reparented to it (the children a worker leaves
//! behind, a daemon's intermediate process), and once it exits someone must reap it.
//!
//! This module owns the [`Registry`] of the pids the primary started itself (workers, the
//! keeper), whose owners reap them (tokio's `Child::wait`, the `Keeper`), and the reaper that
//! reaps every *other* zombie child, one pid at a time (`waitpid(pid, WNOHANG)`, never
//! `waitpid(-1)`, which would steal tokio's children). Children are found in
//! `/proc/self/task/*/children` (CONFIG_PROC_CHILDREN), or else by scanning `/proc/*/stat`.
//!
//! Every child the primary starts must go through the registry while the reaper runs: a child
//! started some other way (say by user code with `std::process::Command`) is indistinguishable
//! from an orphan, and its exit status may be taken before its owner waits for it.

// Not wired into the spawn path yet (the lifecycle rewrite will call it).

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use crate::primary::procfs::stat;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tracing::debug;

/// How often [`run`] reaps even without a SIGCHLD: it catches an orphan that was skipped
/// because its pid was still registered for a child reaped moments before.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// The process's registry: every child the primary starts is recorded in it (one per process,
/// since reaping is per process).
pub(crate) fn registry() -> Arc<Registry> {
    static REGISTRY: std::sync::OnceLock<Arc<Registry>> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(|| Arc::new(Registry::new())).clone()
}

/// True when orphans may be reparented to this process: it is PID 1, or PR_GET_CHILD_SUBREAPER
/// is set.
pub(crate) fn needed() -> bool {
    nix::unistd::getpid().as_raw() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// Makes this process a child subreaper (PR_SET_CHILD_SUBREAPER): orphaned descendants are
/// reparented to it rather than to PID 1. Not inherited by children; kept across exec.
pub(crate) fn become_subreaper() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)?;
    Ok(())
}

/// The pids this process started itself (workers, the keeper), which tokio or their owner
/// reaps, never the orphan reaper.
///
/// A pid counts the times it was inserted, less the times it was removed, so that a pid
/// reused by a new child before the old child's entry is removed stays registered.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    pids: Mutex<HashMap<u32, usize>>,
}

/// The [`Registry`] held while a child is spawned; see [`Registry::lock`].
pub(crate) struct RegistryGuard<'a> {
    pids: MutexGuard<'a, HashMap<u32, usize>>,
}

impl RegistryGuard<'_> {
    /// Records `pid` as started by this process: the orphan reaper never reaps it.
    pub(crate) fn insert(&mut self, pid: u32) {
        *self.pids.entry(pid).or_insert(0) += 1;
    }
}

impl Registry {
    /// An empty registry.
    pub(crate) fn new() -> Registry {
        Registry::default()
    }

    /// Holds the registry while a child is being spawned, so the reaper never sees a fresh
    /// child before it is recorded: the spawner calls this, spawns, then `insert`s the pid
    /// through the guard.
    pub(crate) fn lock(&self) -> RegistryGuard<'_> {
        RegistryGuard { pids: self.pids() }
    }

    /// Removes `pid` (one insertion of it). Call it only once the child has been reaped by its
    /// owner: removed earlier, its zombie could be taken by the orphan reaper.
    pub(crate) fn remove(&self, pid: u32) {
        let mut pids = self.pids();
        if let Some(count) = pids.get_mut(&pid) {
            *count -= 1;
            if *count == 0 {
                pids.remove(&pid);
            }
        }
    }

    /// Whether `pid` is registered.
    #[cfg(test)]
    pub(crate) fn contains(&self, pid: u32) -> bool {
        self.pids().contains_key(&pid)
    }

    /// Reaps (waitpid WNOHANG, one pid at a time) every zombie child of this process that is
    /// not registered. Returns how many it reaped. Never blocks on a child; holds the registry
    /// while it works.
    pub(crate) fn reap_orphans(&self) -> usize {
        let registered = self.pids();
        let zombies = match zombie_children() {
            Ok(zombies) => zombies,
            Err(error) => {
                debug!(%error, "orphan reaper: cannot list this process's children");
                return 0;
            }
        };
        let mut reaped = 0;
        for pid in zombies {
            if registered.contains_key(&pid) {
                continue;
            }
            // The pid is our unreaped child (a zombie), so it names that process until it is
            // reaped, and only this reaper (under the registry lock) reaps unregistered ones.
            match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(status) => {
                    debug!(pid, ?status, "reaped an orphan");
                    reaped += 1;
                }
                Err(Errno::ECHILD) => {}
                Err(error) => debug!(pid, %error, "orphan reaper: waitpid failed"),
            }
        }
        reaped
    }

    fn pids(&self) -> MutexGuard<'_, HashMap<u32, usize>> {
        self.pids.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs until the runtime ends: on every SIGCHLD (tokio::signal::unix, which coexists with
/// tokio's own child handling), `reap_orphans`. Also reaps once at start, and every
/// [`SWEEP_EVERY`]. Returns at once (logging at debug level) if SIGCHLD cannot be listened to.
pub(crate) async fn run(registry: Arc<Registry>) {
    let mut sigchld = match signal(SignalKind::child()) {
        Ok(sigchld) => sigchld,
        Err(error) => {
            debug!(%error, "orphan reaper: cannot listen for SIGCHLD");
            return;
        }
    };
    let mut sweep =
        tokio::time::interval_at(tokio::time::Instant::now() + SWEEP_EVERY, SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Listening before the first pass: an exit after the pass raises a SIGCHLD we see.
        registry.reap_orphans();
        tokio::select! {
            got = sigchld.recv() => if got.is_none() {
                return;
            },
            _ = sweep.tick() => {}
        }
    }
}

/// The zombie children of this process.
fn zombie_children() -> io::Result<Vec<u32>> {
    let me = nix::unistd::getpid().as_raw() as u32;
    // /proc must show this process's pid namespace, or its pids are not ours to wait for.
    let shown = std::fs::read_link("/proc/self")?;
    if shown.to_str().and_then(|s| s.parse::<u32>().ok()) != Some(me) {
        return Err(io::Error::other(format!(
            "/proc/self is {shown:?} but this process is {me}: /proc is another pid namespace's"
        )));
    }
    let children = if has_children_files() {
        children_from_task_files()?
    } else {
        children_from_stat_scan(me)?
    };
    // Checked again from stat: the lists are a moment old, and only zombies are reaped.
    Ok(children
        .into_iter()
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == me && s.state == 'Z'))
        .collect())
}

/// Whether the kernel has `/proc/PID/task/TID/children` (CONFIG_PROC_CHILDREN).
fn has_children_files() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let me = nix::unistd::getpid();
        std::path::Path::new(&format!("/proc/self/task/{me}/children")).exists()
    })
}

/// This process's children, from every thread's `children` file (a child belongs to the thread
/// that forked it, or to whichever thread orphans were reparented to).
fn children_from_task_files() -> io::Result<Vec<u32>> {
    Ok(crate::primary::procfs::children(std::process::id()))
}

/// This process's children, from every process's `stat` (PPid == `me`).
fn children_from_stat_scan(me: u32) -> io::Result<Vec<u32>> {
    Ok(std::fs::read_dir("/proc")?
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == me))
        .collect())
}

#[cfg(test)]
pub(in crate::primary) mod tests {
    use std::process::Command;
    use std::time::Instant;

    use super::*;

    /// Generous: the machine is small and shared.
    const DEADLINE: Duration = Duration::from_secs(10);

    /// Names the test an isolated process runs (see [`isolated`]).
    const ISOLATED: &str = "FORKLINE_TEST_ISOLATED";

    /// Runs `body` in a process of its own: this test binary again, running only the test
    /// `name` of module `module` (its `module_path!()`), with [`ISOLATED`] set to the name.
    /// Becoming a subreaper lasts for the whole process, and reaping every unregistered zombie
    /// would take the children of the tests that run alongside (and a test that kills its own
    /// process needs one); in a process of its own, every child is the test's.
    pub(in crate::primary) fn isolated(module: &str, name: &str, body: impl FnOnce()) {
        if is_isolated(name) {
            body();
            return;
        }
        let test = isolated_command(module, name)
            .output()
            .expect("run the test binary");
        let stdout = String::from_utf8_lossy(&test.stdout);
        let stderr = String::from_utf8_lossy(&test.stderr);
        assert!(
            test.status.success() && stdout.contains("1 passed"),
            "isolated {name}: {:?}\n{stdout}\n{stderr}",
            test.status
        );
    }

    /// The command [`isolated`] runs: this test binary, running only `module::name`.
    pub(in crate::primary) fn isolated_command(module: &str, name: &str) -> Command {
        let module = module.split_once("::").map_or("", |(_, rest)| rest);
        let mut command = Command::new(std::env::current_exe().expect("the test binary"));
        command
            .args([
                &format!("{module}::{name}"),
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ISOLATED, name);
        command
    }

    /// Whether this process is the isolated run of test `name`.
    pub(in crate::primary) fn is_isolated(name: &str) -> bool {
        std::env::var(ISOLATED).as_deref() == Ok(name)
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + DEADLINE;
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn me() -> u32 {
        std::process::id()
    }

    /// The script of the process that makes an orphan: it starts a sleep that outlives it (with
    /// stdout elsewhere, so reading ours ends when sh exits) and prints the sleep's pid.
    const MAKE_ORPHAN: &str = "sleep 2 >/dev/null & echo $!";

    /// Spawns `sh -c script` with stdout piped, registered in `registry`, as the spawner will.
    fn spawn_registered(registry: &Registry, script: &str) -> std::process::Child {
        let mut guard = registry.lock();
        let child = Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        guard.insert(child.id());
        child
    }

    fn parse_pid(stdout: &[u8]) -> u32 {
        let text = String::from_utf8_lossy(stdout);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid in {text:?}"))
    }

    #[test]
    fn reaps_orphans_but_never_a_registered_child() {
        isolated(
            module_path!(),
            "reaps_orphans_but_never_a_registered_child",
            || {
                assert_eq!(needed(), me() == 1, "not a subreaper to begin with");
                become_subreaper().expect("become a subreaper");
                assert!(needed());
                let registry = Registry::new();

                // A registered child that exits at once: a zombie its owner will wait for.
                let mut kept = spawn_registered(&registry, "exit 7");
                // The orphan: sh starts a sleep and exits, and the sleep is reparented to us.
                let maker = spawn_registered(&registry, MAKE_ORPHAN);
                let maker_pid = maker.id();
                let out = maker.wait_with_output().expect("wait for sh");
                registry.remove(maker_pid);
                assert!(out.status.success());
                let orphan = parse_pid(&out.stdout);
                wait_until(
                    "the orphan is our zombie and so is the registered child",
                    || {
                        stat(orphan).is_some_and(|s| s.ppid == me() && s.state == 'Z')
                            && stat(kept.id()).is_some_and(|s| s.state == 'Z')
                    },
                );

                assert_eq!(
                    registry.reap_orphans(),
                    1,
                    "reaped something besides the orphan"
                );
                assert!(stat(orphan).is_none(), "the orphan is still there");
                assert_eq!(registry.reap_orphans(), 0);

                // Its owner still gets the registered child's status.
                let status = kept.wait().expect("wait for the registered child");
                assert_eq!(status.code(), Some(7));
                registry.remove(kept.id());
                assert!(!registry.contains(kept.id()));
            },
        );
    }

    #[test]
    fn run_reaps_on_sigchld_beside_tokio_children() {
        isolated(
            module_path!(),
            "run_reaps_on_sigchld_beside_tokio_children",
            || {
                become_subreaper().expect("become a subreaper");
                let registry = Arc::new(Registry::new());
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime");
                runtime.block_on(async {
                    let reaper = tokio::spawn(run(registry.clone()));
                    let spawn = |script: &str| {
                        let mut guard = registry.lock();
                        let child = tokio::process::Command::new("sh")
                            .args(["-c", script])
                            .stdout(std::process::Stdio::piped())
                            .spawn()
                            .expect("spawn sh");
                        guard.insert(child.id().expect("a pid"));
                        child
                    };
                    let mut kept = spawn("exit 7");
                    let kept_pid = kept.id().expect("a pid");
                    let maker = spawn(MAKE_ORPHAN);
                    let maker_pid = maker.id().expect("a pid");
                    let out = maker.wait_with_output().await.expect("wait for sh");
                    registry.remove(maker_pid);
                    assert!(out.status.success());
                    let orphan = parse_pid(&out.stdout);
                    // sh is gone and the sleep runs on, reparented to us.
                    assert_eq!(stat(orphan).map(|s| s.ppid), Some(me()));

                    // Gone from /proc altogether: reaped (by `run`, the only one who would).
                    let deadline = Instant::now() + DEADLINE;
                    while stat(orphan).is_some() {
                        assert!(Instant::now() < deadline, "the orphan was never reaped");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    // The registered child exited long ago, SIGCHLDs came and went: still tokio's.
                    let status = kept.wait().await.expect("wait for the registered child");
                    assert_eq!(status.code(), Some(7));
                    registry.remove(kept_pid);
                    reaper.abort();
                });
            },
        );
    }

    #[test]
    fn both_ways_of_listing_children_agree() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id();
        assert!(children_from_stat_scan(me()).expect("scan").contains(&pid));
        if has_children_files() {
            assert!(children_from_task_files()
                .expect("children files")
                .contains(&pid));
        }
        assert!(zombie_children()
            .expect("zombies")
            .iter()
            .all(|&z| z != pid));
        child.kill().expect("kill sleep");
        child.wait().expect("wait for sleep");
    }

    #[test]
    fn a_pid_registered_twice_needs_two_removals() {
        let registry = Registry::new();
        registry.lock().insert(42);
        registry.lock().insert(42);
        registry.remove(42);
        assert!(registry.contains(42));
        registry.remove(42);
        assert!(!registry.contains(42));
        registry.remove(42);
        assert!(!registry.contains(42));
    }
}
