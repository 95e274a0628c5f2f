//! `forkline upgrade` against real clusters: the primary is replaced three times while 32
//! clients connect in a loop, in each mode, with no failed and no hung connection, and no
//! process of an old generation left; a new primary that exits or never gets ready leaves the
//! old one serving; an old primary SIGKILLed mid-upgrade leaves the new one serving; systemd
//! hears `RELOADING=1`, then `MAINPID=` and `READY=1`.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);

/// Longest a client waits for its answer before the connection counts as hung.
const HUNG: Duration = Duration::from_secs(10);

/// The load tests run one at a time: 32 clients each is what a 2-core machine can serve.
static LOAD: Mutex<()> = Mutex::new(());

/// A server that answers `pid=PID` and exits on SIGTERM only between connections (SIGTERM
/// is blocked and polled), on fd 3 (shared, reuseport) or `127.0.0.1:$PORT` (proxy). With
/// `--ready notify` it sends READY=1, unless the file named by its first argument exists.
const SERVER: &str = r#"
import os, signal, socket, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
if len(sys.argv) > 1 and os.path.exists(sys.argv[1]):
    never_ready = True
else:
    never_ready = False
if os.environ.get("LISTEN_FDS"):
    s = socket.socket(fileno=3)
else:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", int(os.environ["PORT"])))
    s.listen(128)
addr = os.environ.get("NOTIFY_SOCKET", "")
if addr and not never_ready:
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
s.settimeout(0.05)
while True:
    if signal.SIGTERM in signal.sigpending():
        os._exit(0)
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.settimeout(None)
    c.sendall(f"pid={os.getpid()}\n".encode())
    c.close()
"#;

/// One test's cluster, its world and the primaries it went through.
struct Cluster {
    dir: TempDir,
    name: String,
    port: u16,
    first: Running,
    /// The primary now serving (the first, or the last new one).
    primary: u32,
}

impl Cluster {
    /// Starts `name` with 2 workers in `mode`, waits until both are ready.
    fn start(name: &str, mode: &str, extra: &[&str]) -> Cluster {
        require("python3");
        let dir = TempDir::new(&format!("upgrade-{name}"));
        let server = dir.write("server.py", SERVER);
        let port = free_port();
        let mut command = world(&dir);
        command.args(["run", "--name", name, "-w", "2", "--mode", mode]);
        command.args(["--settle-time", "100ms"]);
        command.args(extra);
        command.arg("-l").arg(format!("127.0.0.1:{port}"));
        if mode == "round-robin" {
            // Ready once it listens through the primary.
            command.arg("--").arg(rr_worker());
        } else {
            command.args(["--ready", "notify"]);
            command
                .arg("--")
                .arg("python3")
                .arg(&server)
                .arg(dir.path().join("never-ready"));
        }
        let first = Running::spawn(command);
        let cluster = Cluster {
            dir,
            name: name.to_string(),
            port,
            primary: first.pid(),
            first,
        };
        cluster.wait_ready(cluster.primary);
        cluster
    }

    /// Waits until primary `pid` answers status with 2 ready workers.
    fn wait_ready(&self, pid: u32) -> Value {
        until(STARTUP, || {
            self.status().filter(|s| s["pid"] == pid && s["ready"] == 2)
        })
        .unwrap_or_else(|| {
            panic!(
                "primary {pid} not ready: {:?}\n{}",
                self.status(),
                self.first.output()
            )
        })
    }

    fn ctl(&self, args: &[&str]) -> Finished {
        let mut command = world(&self.dir);
        command.args(args);
        run_to_end(command, Duration::from_secs(120))
    }

    fn status(&self) -> Option<Value> {
        let out = self.ctl(&["status", &self.name, "--json"]);
        (out.code == Some(0)).then(|| serde_json::from_str(&out.stdout).expect("JSON status"))
    }

    /// The primary and its workers now.
    fn generation(&self) -> Vec<u32> {
        let status = self.status().expect("status answers");
        let mut pids = vec![status["pid"].as_u64().unwrap() as u32];
        pids.extend(
            status["workers"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|w| w["pid"].as_u64().map(|p| p as u32)),
        );
        pids
    }

    /// `forkline upgrade NAME`; on success the new primary's pid.
    fn upgrade(&mut self) -> Result<u32, Finished> {
        let out = self.ctl(&["upgrade", &self.name]);
        if out.code != Some(0) {
            return Err(out);
        }
        let pid: u32 = out
            .stdout
            .split_whitespace()
            .nth(3)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {:?}", out.stdout));
        self.primary = pid;
        Ok(pid)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The first primary is the test's child (`Running` kills it); later ones are not.
        if self.primary != self.first.pid() {
            let _ = kill(Pid::from_raw(self.primary as i32), Signal::SIGKILL);
        }
    }
}

/// `forkline` with the world's XDG_RUNTIME_DIR.
fn world(dir: &TempDir) -> Command {
    let mut command = forkline();
    command.env("XDG_RUNTIME_DIR", dir.path());
    command
}

/// `target/debug/examples/rr_worker`, built with the tests.
fn rr_worker() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let worker = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/PROFILE/deps")
        .join("examples")
        .join("rr_worker");
    assert!(worker.is_file(), "{} is missing", worker.display());
    worker
}

/// Clients that connect, read one line and close, in a loop, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match one_request(port) {
                            Ok(()) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            failures,
            threads,
        }
    }

    /// Waits until `more` further connections were answered.
    fn wait_answered(&self, more: u64) {
        let target = self.answered.load(Ordering::Relaxed) + more;
        let reached = until(STARTUP, || {
            (self.answered.load(Ordering::Relaxed) >= target).then_some(())
        });
        assert!(
            reached.is_some(),
            "load stalled: {:?}",
            self.failures.lock().unwrap()
        );
    }

    /// Stops the clients: (answered, failures).
    fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.answered.load(Ordering::Relaxed), failures)
    }
}

/// Connects, reads `pid=...`; any other outcome (refused, reset, empty, hung) is a failure.
fn one_request(port: u16) -> Result<(), String> {
    let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream =
        TcpStream::connect_timeout(&address, HUNG).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(HUNG)).unwrap();
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .map_err(|e| format!("read: {e} (after {answer:?})"))?;
    if answer.starts_with("pid=") || answer.starts_with("worker ") {
        Ok(())
    } else {
        Err(format!("answer {answer:?}"))
    }
}

/// Three upgrades in a row under 32 clients: every one succeeds, no client fails or hangs,
/// each old generation (primary and workers) is gone, and the last primary serves.
fn three_upgrades_under_load(mode: &str) {
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start(&format!("up-{mode}"), mode, &[]);
    let load = Load::start(cluster.port, 32);
    load.wait_answered(100);
    let mut old_generations = Vec::new();
    for round in 0..3 {
        let old = cluster.generation();
        let pid = cluster.upgrade().unwrap_or_else(|out| {
            panic!(
                "upgrade {round} failed: {}\n{}",
                out.stderr,
                cluster.first.output()
            )
        });
        assert!(!old.contains(&pid));
        cluster.wait_ready(pid);
        load.wait_answered(50);
        old_generations.push(old);
    }
    let (answered, failures) = load.finish();
    eprintln!(
        "{mode}: 3 upgrades under 32 clients: {answered} answered, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{mode}: {} of {} connections failed: {:?}\n{}",
        failures.len(),
        answered + failures.len() as u64,
        &failures[..failures.len().min(10)],
        cluster.first.output()
    );
    // The first primary exited by itself, cleanly; every old process is gone.
    let first = cluster.first.wait_exit(STARTUP);
    assert_eq!(
        first.and_then(|s| s.code()),
        Some(0),
        "{}",
        cluster.first.output()
    );
    for pid in old_generations.concat() {
        let gone = until(STARTUP, || (!alive(pid) || zombie(pid)).then_some(()));
        assert!(
            gone.is_some(),
            "{mode}: pid {pid} of an old generation is still running"
        );
    }
    assert_eq!(one_request(cluster.port), Ok(()));
}

#[test]
fn upgrades_under_load_in_shared_mode() {
    three_upgrades_under_load("shared");
}

#[test]
fn upgrades_under_load_in_reuseport_mode() {
    three_upgrades_under_load("reuseport");
}

#[test]
fn upgrades_under_load_in_round_robin_mode() {
    three_upgrades_under_load("round-robin");
}

#[test]
fn upgrades_under_load_in_proxy_mode() {
    three_upgrades_under_load("proxy");
}

/// A new primary that exits at once (its config file broke since the first started) or
/// never gets ready: `forkline upgrade` exits 1 saying why, the running primary keeps serving
/// every client, and nothing of the failed primary is left.
#[test]
fn a_failed_upgrade_leaves_the_old_primary_serving() {
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|p| p.into_inner());
    require("python3");
    let dir = TempDir::new("upgrade-fail");
    let config = dir.write("forkline.toml", "workers = 2\n");
    // Build the cluster by hand to give it the config file.
    let server = dir.write("server.py", SERVER);
    let port = free_port();
    let mut command = world(&dir);
    command
        .args(["run", "--name", "fails", "--config"])
        .arg(&config);
    command.args(["--ready", "notify", "--upgrade-timeout", "2s"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command
        .arg("--")
        .arg("python3")
        .arg(&server)
        .arg(dir.path().join("never-ready"));
    let first = Running::spawn(command);
    let mut cluster = Cluster {
        dir,
        name: "fails".into(),
        port,
        primary: first.pid(),
        first,
    };
    cluster.wait_ready(cluster.primary);
    let workers = cluster.generation();
    let load = Load::start(port, 32);
    load.wait_answered(100);

    // The new primary exits 2: its config file is now invalid.
    std::fs::write(&config, "workers = \"many\"\n").unwrap();
    let out = cluster
        .upgrade()
        .expect_err("an upgrade with a broken config");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("exited with code 2"), "{}", out.stderr);
    std::fs::write(&config, "workers = 2\n").unwrap();

    // The new primary's workers never get ready.
    std::fs::write(cluster.dir.path().join("never-ready"), "").unwrap();
    let out = cluster
        .upgrade()
        .expect_err("an upgrade that never gets ready");
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("was not ready within 2s"),
        "{}",
        out.stderr
    );

    load.wait_answered(100);
    let (answered, failures) = load.finish();
    assert!(
        failures.is_empty(),
        "{} of {answered} failed: {failures:?}",
        failures.len()
    );
    // Still the same primary and workers, and only them.
    assert_eq!(cluster.generation(), workers);
    let first = cluster.first.pid();
    let settled = until(STARTUP, || {
        let children = children_of(first);
        (children.len() == 2).then_some(children)
    });
    assert!(
        settled.is_some(),
        "children of the primary: {:?}",
        children_of(first)
    );
    assert_eq!(cluster.primary, first);
}

/// systemd hears the upgrade: `RELOADING=1` with `MONOTONIC_USEC=` when it starts, then
/// `MAINPID=NEW` and `READY=1` (sent by the old primary, which systemd still knows as the main
/// pid), and nothing more from the old primary — no `STOPPING=1` while the new one runs.
#[test]
fn systemd_hears_the_new_main_pid() {
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|p| p.into_inner());
    require("python3");
    let dir = TempDir::new("upgrade-notify");
    let path = dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&path).unwrap();
    systemd
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    nix::sys::socket::setsockopt(&systemd, nix::sys::socket::sockopt::PassCred, &true).unwrap();
    let server = dir.write("server.py", SERVER);
    let port = free_port();
    let mut command = world(&dir);
    command.env("NOTIFY_SOCKET", &path);
    command.args(["run", "--name", "notified", "-w", "2", "--ready", "notify"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command.arg("--").arg("python3").arg(&server);
    let first = Running::spawn(command);
    let mut cluster = Cluster {
        dir,
        name: "notified".into(),
        port,
        primary: first.pid(),
        first,
    };
    let mut received: Vec<(u32, String)> = Vec::new();
    let receive = |received: &mut Vec<(u32, String)>| {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!(nix::sys::socket::UnixCredentials);
        loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let Ok(message) = recvmsg::<UnixAddr>(
                std::os::fd::AsRawFd::as_raw_fd(&systemd),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            ) else {
                return;
            };
            let sender = message
                .cmsgs()
                .ok()
                .into_iter()
                .flatten()
                .find_map(|c| match c {
                    ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid() as u32),
                    _ => None,
                })
                .unwrap_or(0);
            let bytes = message.bytes;
            received.push((sender, String::from_utf8_lossy(&buf[..bytes]).into_owned()));
        }
    };
    let old = cluster.primary;
    let ready = until(STARTUP, || {
        receive(&mut received);
        received
            .iter()
            .any(|(_, m)| m.lines().any(|l| l == "READY=1"))
            .then_some(())
    });
    assert!(ready.is_some(), "{received:?}");
    let seen = received.len();
    let new = cluster
        .upgrade()
        .unwrap_or_else(|out| panic!("{}", out.stderr));
    let handed = until(STARTUP, || {
        receive(&mut received);
        received[seen..]
            .iter()
            .position(|(_, m)| m.lines().any(|l| l == format!("MAINPID={new}")))
    })
    .unwrap_or_else(|| panic!("no MAINPID={new}: {received:?}"));
    let after: Vec<(u32, String)> = received[seen..].to_vec();
    let reloading = after
        .iter()
        .position(|(_, m)| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {after:?}"));
    assert!(reloading < handed, "{after:?}");
    assert!(after[reloading].1.contains("MONOTONIC_USEC="), "{after:?}");
    assert_eq!(
        after[handed].0, old,
        "MAINPID= must come from the main pid: {after:?}"
    );
    assert!(after[handed].1.lines().any(|l| l == "READY=1"), "{after:?}");
    // The old primary drains and exits without telling systemd it stops.
    cluster
        .first
        .wait_exit(STARTUP)
        .expect("the old primary exits");
    receive(&mut received);
    let from_old_after: Vec<&String> = received[seen + handed + 1..]
        .iter()
        .filter(|(pid, _)| *pid == old)
        .map(|(_, m)| m)
        .collect();
    assert!(from_old_after.is_empty(), "{from_old_after:?}");
    // The new primary talks to systemd from now on (its status as workers change).
    assert_eq!(cluster.ctl(&["scale", "notified", "3"]).code, Some(0));
    let from_new = until(STARTUP, || {
        receive(&mut received);
        received
            .iter()
            .any(|(pid, m)| *pid == new && m.starts_with("STATUS="))
            .then_some(())
    });
    assert!(from_new.is_some(), "{received:?}");
}

/// A Unix socket survives the upgrade: the old primary leaves its file to the new one, which
/// serves it; clients connecting by path are answered by the new workers.
#[test]
fn a_unix_socket_is_handed_over_with_its_file() {
    use std::os::unix::net::UnixStream;
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|p| p.into_inner());
    require("python3");
    let dir = TempDir::new("upgrade-unix");
    let server = dir.write("server.py", SERVER);
    let path = dir.path().join("app.sock");
    let mut command = world(&dir);
    command.args(["run", "--name", "unixy", "-w", "2", "--ready", "notify"]);
    command.arg("-l").arg(format!("unix:{}", path.display()));
    command.arg("--").arg("python3").arg(&server);
    let first = Running::spawn(command);
    let mut cluster = Cluster {
        dir,
        name: "unixy".into(),
        port: 0,
        primary: first.pid(),
        first,
    };
    cluster.wait_ready(cluster.primary);
    let ask = |path: &Path| -> Option<String> {
        let mut stream = UnixStream::connect(path).ok()?;
        stream.set_read_timeout(Some(HUNG)).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let new = cluster
        .upgrade()
        .unwrap_or_else(|out| panic!("{}", out.stderr));
    cluster.wait_ready(new);
    cluster
        .first
        .wait_exit(STARTUP)
        .expect("the old primary exits");
    let workers = cluster.generation();
    assert!(path.exists(), "the old primary removed the socket file");
    let answer = ask(&path).unwrap_or_else(|| panic!("no answer on {}", path.display()));
    let pid: u32 = answer.trim().trim_start_matches("pid=").parse().unwrap();
    assert!(workers.contains(&pid), "{answer} not from {workers:?}");
}

#[test]
fn upgrades_under_load_in_steer_mode() {
    three_upgrades_under_load("steer");
}

/// The old primary is SIGKILLed in the middle of an upgrade, while the new one waits for its
/// workers (they are not ready yet): the new primary takes over once they are, serves the
/// port, control socket included, and nothing of the old generation is left.
#[test]
fn the_old_primary_killed_mid_upgrade_leaves_the_new_one_serving() {
    let _one_at_a_time = LOAD.lock().unwrap_or_else(|p| p.into_inner());
    let mut cluster = Cluster::start("orphan", "shared", &["--ready-timeout", "3s"]);
    let old = cluster.generation();
    let first = cluster.first.pid();
    // The new primary's workers will not get ready until the marker goes.
    let marker = cluster.dir.path().join("never-ready");
    std::fs::write(&marker, "").unwrap();
    let mut command = world(&cluster.dir);
    command.args(["upgrade", "orphan"]);
    let _upgrading = Running::spawn(command);
    // The new primary: the old one's child that is not a worker (a forkline, not a python3).
    let comm = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let new = until(STARTUP, || {
        children_of(first)
            .into_iter()
            .find(|&child| comm(child).trim() == "forkline")
    })
    .unwrap_or_else(|| panic!("no new primary\n{}", cluster.first.output()));
    let unready = until(STARTUP, || {
        let workers = children_of(new);
        (workers.len() >= 2).then_some(workers)
    })
    .expect("the new primary's workers did not start");
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    cluster.primary = new;
    // Its workers time out unready (3 s) and are replaced: it ran on alone meanwhile. Then the
    // marker goes, workers get ready, and it takes over.
    let replaced = until(STARTUP, || {
        children_of(new)
            .iter()
            .any(|pid| !unready.contains(pid))
            .then_some(())
    });
    assert!(replaced.is_some(), "the unready workers were not replaced");
    std::fs::remove_file(&marker).unwrap();
    cluster.wait_ready(new);
    let reply = one_request(cluster.port);
    assert!(reply.is_ok(), "{reply:?}");
    for pid in old {
        assert!(
            until(STARTUP, || (!alive(pid) || zombie(pid)).then_some(())).is_some(),
            "{pid} of the old generation is still running"
        );
    }
}
