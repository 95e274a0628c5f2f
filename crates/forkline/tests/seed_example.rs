//! The seed example (`examples/cluster.rs`), run as a user would: its output, its answers, a
//! killed worker's replacement, a port it cannot bind, reloads and scaling that keep the pool
//! at its size, and Ctrl-C.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use common::{alive, eventually, fetch, free_port, SOON};

/// `target/<profile>/examples/cluster`, built once per run of these tests by the cargo and
/// profile that built them: `cargo test --test seed_example` alone builds no example, and
/// would run a stale one.
fn seed_example() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            let profile_dir = exe.parent().unwrap().parent().unwrap();
            let target_dir = profile_dir.parent().unwrap();
            let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
                "debug" => "dev",
                other => other,
            };
            let built = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "-p", "forkline", "--example", "cluster"])
                .args(["--profile", profile, "--target-dir"])
                .arg(target_dir)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .output()
                .expect("run cargo");
            assert!(
                built.status.success(),
                "cannot build the seed example:\n{}",
                String::from_utf8_lossy(&built.stderr)
            );
            profile_dir.join("examples").join("cluster")
        })
        .clone()
}

/// Lines of one output stream, collected by a thread, and whether it reached its end.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<(Vec<String>, bool)>>);

impl Lines {
    fn collect(stream: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                sink.0.lock().unwrap().0.push(line);
            }
            sink.0.lock().unwrap().1 = true;
        });
        lines
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().0.clone()
    }

    /// True once every writer has closed the stream.
    fn closed(&self) -> bool {
        self.0.lock().unwrap().1
    }

    /// How many lines start with `prefix`.
    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|l| l.starts_with(prefix)).count()
    }

    /// The pids of the `Create worker-PID` lines, in order.
    fn created(&self) -> Vec<u32> {
        self.all()
            .iter()
            .filter_map(|l| l.strip_prefix("Create worker-")?.parse().ok())
            .collect()
    }
}

/// The seed example running in its own process group (so a test can press "Ctrl-C"), with its
/// output collected. Killed by pid when dropped, with every worker it reported.
struct Seed {
    child: Child,
    addr: String,
    stdout: Lines,
    stderr: Lines,
    status: Option<ExitStatus>,
}

impl Seed {
    /// `cluster ADDR 10 WORKERS`, with `FORKLINE_SCHED_POLICY=policy` if given.
    fn start(addr: &str, workers: usize, policy: Option<&str>) -> Seed {
        let mut command = Command::new(seed_example());
        command
            .args([addr, "10", &workers.to_string()])
            .env_remove("FORKLINE_WORKER_ID")
            .env_remove("FORKLINE_SCHED_POLICY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        if let Some(policy) = policy {
            command.env("FORKLINE_SCHED_POLICY", policy);
        }
        let mut child = command.spawn().expect("run the seed example");
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        Seed {
            child,
            addr: addr.to_string(),
            stdout,
            stderr,
            status: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// What Ctrl-C at a terminal does: `signal` to every process of the foreground group.
    fn signal_group(&self, signal: Signal) {
        killpg(Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let deadline = Instant::now() + timeout;
            while self.status.is_none() && Instant::now() < deadline {
                self.status = self.child.try_wait().unwrap();
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.status
    }

    /// Waits until `check` over the output holds.
    fn wait_output(&self, what: &str, timeout: Duration, check: impl Fn(&Lines) -> bool) {
        assert!(
            eventually(timeout, || check(&self.stdout)),
            "timed out waiting for {what}\n{}",
            self.output()
        );
    }

    /// The primary's running (not zombie) children.
    fn children(&self) -> BTreeSet<u32> {
        children_of(self.pid())
    }

    /// The primary's running descendants (its children, theirs, and so on, 4 levels deep):
    /// where its workers are, whether it starts them itself or through a helper process.
    fn descendants(&self) -> BTreeSet<u32> {
        let mut all = BTreeSet::new();
        let mut level = self.children();
        for _ in 0..4 {
            let next: BTreeSet<u32> = level.iter().flat_map(|&p| children_of(p)).collect();
            all.extend(level);
            level = next;
        }
        all
    }

    /// The distinct worker pids that answer `tries` connections.
    fn answering(&self, tries: usize) -> BTreeSet<u32> {
        (0..tries)
            .filter_map(|_| fetch(&self.addr).ok())
            .filter_map(|reply| {
                reply
                    .trim()
                    .strip_prefix("Request handled by worker-")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// True when the primary has `n` children and `answering` is `n` of its descendants.
    fn is_pool_of(&self, n: usize, answering: &BTreeSet<u32>) -> bool {
        self.children().len() == n
            && answering.len() == n
            && answering.is_subset(&self.descendants())
    }

    /// Waits until exactly `n` workers run — `n` children of the primary, and `n` distinct
    /// pids among its processes answering `4n` connections (round-robin mode) — then checks
    /// it stays so over another round of connections.
    fn assert_pool_of(&self, n: usize) {
        let mut answering = BTreeSet::new();
        let settled = eventually(SOON, || {
            answering = self.answering(4 * n);
            self.is_pool_of(n, &answering)
        });
        assert!(
            settled,
            "expected {n} workers; children {:?}, answering {answering:?}\n{}",
            self.children(),
            self.output()
        );
        let again = self.answering(4 * n);
        assert!(
            self.is_pool_of(n, &again) && again == answering,
            "the pool did not stay at {n}: children {:?}, answering {again:?} then \
             {answering:?}\n{}",
            self.children(),
            self.output()
        );
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.all().join("\n"),
            self.stderr.all().join("\n")
        )
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // Its workers die with it (PR_SET_PDEATHSIG); those found now are killed by pid
            // too, in case one is not a direct child.
            let left = self.descendants();
            let _ = self.child.kill();
            let _ = self.child.wait();
            for pid in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

/// The running (not zombie) children of `pid`, from `/proc/PID/task/*/children`.
fn children_of(pid: u32) -> BTreeSet<u32> {
    let mut children = BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .filter(|&p| alive(p))
                    .filter(|&p| !is_keeper(p)),
            );
        }
    }
    children
}

fn local_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[test]
fn seed_example_serves_reports_and_replaces_workers() {
    let addr = local_addr();
    let mut seed = Seed::start(&addr, 2, None);
    seed.wait_output("2 workers online", SOON, |out| out.created().len() == 2);
    let pids = seed.stdout.created();
    // Answers come from both workers.
    let mut answered = std::collections::HashSet::new();
    assert!(eventually(SOON, || {
        if let Ok(reply) = fetch(&addr) {
            assert!(reply.starts_with("Request handled by worker-"), "{reply:?}");
            answered.insert(reply.trim().to_string());
        }
        answered.len() == 2
    }));
    // Kill one: the primary reports it like Node and forks a replacement.
    kill(Pid::from_raw(pids[0] as i32), Signal::SIGKILL).unwrap();
    seed.wait_output("the death and a replacement", SOON, |out| {
        out.created().len() == 3
    });
    let died = format!(
        "[Primary] worker {} died with code: null, and SIGKILL",
        pids[0]
    );
    let lines = seed.stdout.all();
    let died_at = lines.iter().position(|l| *l == died);
    let created_at = lines.iter().rposition(|l| l.starts_with("Create worker-"));
    assert!(
        died_at.is_some() && died_at < created_at,
        "{}",
        seed.output()
    );
    seed.assert_pool_of(2);
    // Graceful stop.
    seed.signal(Signal::SIGTERM);
    let status = seed.wait_exit(SOON).expect("primary exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", seed.output());
    assert!(eventually(SOON, || !alive(pids[1])));
}

/// A port that is taken: the primary fails to bind it before it forks anything, says so in
/// one line naming the address, and exits 1 — in every distribution mode. (It used to fork
/// workers whose `listen` failed, and replace them, hundreds of times a second.)
#[test]
fn a_taken_port_exits_1_with_one_line_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for policy in ["rr", "none", "reuseport"] {
        let mut seed = Seed::start(&addr, 2, Some(policy));
        let status = seed.wait_exit(SOON);
        let forks = seed.stdout.count("Create worker-") + seed.stdout.count("[Primary] worker ");
        assert!(
            status.is_some(),
            "{policy}: still running after {SOON:?} ({forks} lines of forks and deaths)\n{}",
            seed.output().chars().take(4000).collect::<String>()
        );
        assert_eq!(
            status.unwrap().code(),
            Some(1),
            "{policy}\n{}",
            seed.output()
        );
        assert!(forks <= 4, "{policy}: {forks} forks\n{}", seed.output());
        // The pipe closes once the primary (and any worker) has gone: every line is in.
        assert!(eventually(SOON, || seed.stderr.closed()), "{policy}");
        let stderr: Vec<String> = seed
            .stderr
            .all()
            .into_iter()
            .filter(|l| !l.trim().is_empty())
            .collect();
        assert_eq!(stderr.len(), 1, "{policy}: {stderr:#?}");
        assert!(stderr[0].contains(&addr), "{policy}: {}", stderr[0]);
    }
}

/// The primary binds the address up front; each worker's `listen` on the same address gets
/// that listener from the primary (round-robin, shared) or a socket of the same port
/// (reuseport). Both workers answer in each mode, and SIGTERM stops the cluster cleanly.
#[test]
fn serves_in_every_mode() {
    for policy in ["rr", "none", "reuseport"] {
        let addr = local_addr();
        let mut seed = Seed::start(&addr, 2, Some(policy));
        seed.wait_output(&format!("{policy}: 2 workers online"), SOON, |out| {
            out.created().len() == 2
        });
        if policy == "rr" {
            seed.assert_pool_of(2);
        } else {
            // The kernel picks the worker: ask until both have answered.
            let mut seen = BTreeSet::new();
            let both = eventually(SOON, || {
                seen.extend(seed.answering(4));
                seen.len() == 2
            });
            assert!(both, "{policy}: answers from {seen:?}\n{}", seed.output());
            assert!(seed.is_pool_of(2, &seen), "{policy}: {seen:?}");
        }
        assert_eq!(
            seed.stdout.count("[Primary]"),
            0,
            "{policy}: a worker died\n{}",
            seed.output()
        );
        seed.signal(Signal::SIGTERM);
        let status = seed.wait_exit(SOON);
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{policy}\n{}",
            seed.output()
        );
    }
}

/// SIGHUP reloads: every worker is replaced, and the pool stays at its size. The old workers
/// leave on purpose (`exited_after_disconnect`), so the exit handler forks nothing for them.
/// (It used to fork one for each: 2, 4, 8, 16 workers.)
#[test]
fn sighup_three_times_keeps_the_pool_at_its_size() {
    let addr = local_addr();
    let seed = Seed::start(&addr, 2, None);
    seed.wait_output("2 workers online", SOON, |out| out.created().len() == 2);
    seed.assert_pool_of(2);
    for round in 1..=3 {
        seed.signal(Signal::SIGHUP);
        // Two new workers, two old ones gone: this reload is done.
        seed.wait_output(&format!("reload {round}"), SOON * 2, |out| {
            out.created().len() >= 2 + 2 * round && out.count("[Primary] worker ") >= 2 * round
        });
        seed.assert_pool_of(2);
    }
    assert_eq!(seed.stdout.created().len(), 8, "{}", seed.output());
    assert_eq!(
        seed.stdout.count("[Primary] worker "),
        6,
        "{}",
        seed.output()
    );
    let newest: BTreeSet<u32> = seed.stdout.created()[6..].iter().copied().collect();
    assert_eq!(seed.answering(8), newest, "{}", seed.output());
}

/// SIGTTOU takes one worker away, and it stays away.
#[test]
fn sigttou_leaves_one_worker_less() {
    let addr = local_addr();
    let seed = Seed::start(&addr, 3, None);
    seed.wait_output("3 workers online", SOON, |out| out.created().len() == 3);
    seed.assert_pool_of(3);
    seed.signal(Signal::SIGTTOU);
    seed.wait_output("a worker's exit", SOON, |out| {
        out.count("[Primary] worker ") == 1
    });
    seed.assert_pool_of(2);
    assert_eq!(seed.stdout.created().len(), 3, "{}", seed.output());
}

/// Ctrl-C once every worker is online stops the cluster gracefully: exit code 0 within a few
/// seconds, five times. Ctrl-C signals the whole process group; every second round SIGINT
/// goes to the primary alone, as `kill -INT` does.
#[test]
fn ctrl_c_once_every_worker_is_online_stops_gracefully() {
    ctrl_c_rounds(false);
}

/// Ctrl-C right after start — the primary handles SIGINT already, its workers are still
/// starting and not yet online — stops the cluster gracefully too: exit code 0 within a few
/// seconds, five times, alternating as above. (Stopping a worker that has not finished its
/// handshake used to leave it running until the graceful timeout, 30 s.)
#[test]
fn ctrl_c_right_after_start_stops_gracefully() {
    ctrl_c_rounds(true);
}

/// Five rounds of: start 4 workers, wait (until the primary handles SIGINT if `early`, else
/// until every worker is online), press Ctrl-C, expect exit code 0 within a few seconds.
fn ctrl_c_rounds(early: bool) {
    const A_FEW_SECONDS: Duration = Duration::from_secs(10);
    for round in 0..5 {
        let to_group = round % 2 == 0;
        let what = format!(
            "round {round}, SIGINT to the {}",
            if to_group { "group" } else { "primary" }
        );
        let addr = local_addr();
        let mut seed = Seed::start(&addr, 4, None);
        if early {
            assert!(
                eventually(SOON, || catches_sigint(seed.pid())),
                "{what}: the primary never handled SIGINT\n{}",
                seed.output()
            );
        } else {
            seed.wait_output("4 workers online", SOON, |out| out.created().len() == 4);
        }
        if to_group {
            seed.signal_group(Signal::SIGINT);
        } else {
            seed.signal(Signal::SIGINT);
        }
        let sent = Instant::now();
        let status = seed.wait_exit(A_FEW_SECONDS);
        assert!(
            status.is_some(),
            "{what}: still running {:?} after SIGINT\n{}",
            sent.elapsed(),
            seed.output()
        );
        assert_eq!(
            status.unwrap().code(),
            Some(0),
            "{what}: {status:?}\n{}",
            seed.output()
        );
        for pid in seed.stdout.created() {
            assert!(
                eventually(SOON, || !alive(pid)),
                "{what}: worker {pid} outlived the primary"
            );
        }
    }
}

/// True once process `pid` has a handler for SIGINT (`SigCgt` in `/proc/PID/status`).
fn catches_sigint(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGINT - 1)) != 0)
}

/// True for the primary's keeper process (`forkline-keeper`), which is a child of the primary
/// but not a worker.
fn is_keeper(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "forkline-keeper")
}

/// SIGUSR2 replaces the primary itself (`Cluster::upgrade`): the seed example starts again as
/// a new primary with the listening socket, its workers answer, and the old primary exits 0
/// with its workers gone. The port answers throughout.
#[test]
fn sigusr2_hands_the_port_to_a_new_primary() {
    let addr = local_addr();
    let mut seed = Seed::start(&addr, 2, None);
    seed.wait_output("2 workers online", SOON, |out| out.created().len() == 2);
    seed.assert_pool_of(2);
    let old: BTreeSet<u32> = seed.stdout.created().into_iter().collect();
    seed.signal(Signal::SIGUSR2);
    let mut answered_meanwhile = 0;
    let exited = loop {
        if fetch(&addr).is_ok() {
            answered_meanwhile += 1;
        } else {
            panic!(
                "the port stopped answering during the upgrade\n{}",
                seed.output()
            );
        }
        if let Some(status) = seed.wait_exit(Duration::from_millis(1)) {
            break status;
        }
        assert!(answered_meanwhile < 100_000, "the old primary never exited");
    };
    assert_eq!(exited.code(), Some(0), "{}", seed.output());
    let answering = seed.answering(8);
    let worker = *answering
        .iter()
        .next()
        .unwrap_or_else(|| panic!("nobody answers after the upgrade\n{}", seed.output()));
    // The new primary: the answering worker's parent, not the old primary.
    let stat = std::fs::read_to_string(format!("/proc/{worker}/stat")).unwrap();
    let new_primary: i32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let stop = NewPrimary(new_primary);
    assert_ne!(new_primary as u32, seed.pid());
    assert!(answering.is_disjoint(&old), "{answering:?} {old:?}");
    for pid in &old {
        assert!(
            eventually(SOON, || !alive(*pid)),
            "old worker {pid} still runs\n{}",
            seed.output()
        );
    }
    drop(stop);
}

/// Stops a primary the test did not start itself (a new one from an upgrade), by pid.
struct NewPrimary(i32);

impl Drop for NewPrimary {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGTERM);
        eventually(SOON, || !alive(self.0 as u32));
        let _ = kill(Pid::from_raw(self.0), Signal::SIGKILL);
    }
}
