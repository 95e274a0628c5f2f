//! Hostile and exhausted inputs (issue #10), with real processes: malformed IPC from a worker.

mod common;

use std::os::unix::process::CommandExt;

use common::{Testbed, SOON};
use serde_json::Value;

/// An empty packet reads like a close, and an oversized one is cut off by the kernel: both are
/// protocol errors that get the worker killed and replaced, never a silent "channel closed"
/// that leaves a live worker out of service.
#[test]
fn an_empty_or_oversized_packet_is_a_protocol_error_and_the_worker_is_replaced() {
    for behavior in ["empty-packet", "oversize-packet"] {
        let mut tb = Testbed::start(&[("TB_WORKERS", "2"), ("TB_BEHAVIOR_1", behavior)]);
        let error = tb.wait_event("worker-error", Some(1));
        let text = error["error"].as_str().unwrap();
        assert!(text.contains("bad packet"), "{behavior}: {error}");
        let exit = tb.wait_event("exit", Some(1));
        assert_eq!(exit["signal"], 9, "{behavior}: killed, {exit}");
        assert_eq!(exit["exited_after_disconnect"], false);
        tb.wait_for("replacement", SOON, |e| {
            e["event"] == "fork" && e["id"] == 1
        });
        tb.command("send 0 {\"still\":\"here\"}");
        let reply = tb.wait_for("echo", SOON, |e| e["event"] == "message" && e["id"] == 0);
        assert_eq!(reply["payload"]["echo"]["still"], Value::from("here"));
    }
}

fn listen_error(tb: &mut Testbed) -> Value {
    let e = tb.wait_for("listen error", SOON, |e| {
        e["event"] == "message" && e["payload"].get("listen_error").is_some()
    });
    e["payload"].clone()
}

/// A bind error reaches the worker as the OS error, as Node's `err.code` does: its
/// `io::ErrorKind` and errno, not only a text.
#[test]
fn bind_errors_carry_the_os_error_to_the_worker() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_LISTEN", addr.as_str())]);
    let error = listen_error(&mut tb);
    assert_eq!(error["kind"], "AddrInUse", "{error}");
    assert_eq!(error["errno"], libc::EADDRINUSE, "{error}");
    assert!(error["listen_error"].as_str().unwrap().contains(&addr));

    // An address this machine does not have (nothing is sent anywhere: bind fails).
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_LISTEN", "192.0.2.1:8080")]);
    let error = listen_error(&mut tb);
    assert_eq!(error["kind"], "AddrNotAvailable", "{error}");
    assert_eq!(error["errno"], libc::EADDRNOTAVAIL, "{error}");
}

/// A Unix socket that another server is serving is named as in use, and left alone.
#[test]
fn a_unix_socket_in_use_is_named_and_left_alone() {
    let dir = std::env::temp_dir().join(format!("forkline-edges-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("busy.sock");
    let _ = std::fs::remove_file(&path);
    let busy = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let path_str = path.to_str().unwrap();
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_LISTEN", path_str),
        ("TB_KIND", "unix"),
    ]);
    let error = listen_error(&mut tb);
    assert_eq!(error["kind"], "AddrInUse", "{error}");
    assert_eq!(error["errno"], libc::EADDRINUSE, "{error}");
    assert!(
        error["listen_error"].as_str().unwrap().contains(path_str),
        "{error}"
    );
    // The other server still has its socket.
    assert!(std::os::unix::net::UnixStream::connect(&path).is_ok());
    drop(busy);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A relative Unix socket path is the worker's: it resolves against the worker's working
/// directory, not the primary's.
#[test]
fn a_relative_unix_path_resolves_against_the_worker_directory() {
    let dir = std::env::temp_dir().join(format!("forkline-edges-cwd-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_LISTEN", "relative.sock"),
        ("TB_KIND", "unix"),
        ("TB_CWD", dir.to_str().unwrap()),
    ]);
    let listening = tb.wait_for("listening", SOON, |e| {
        e["event"] == "message" && e["payload"].get("listening").is_some()
    });
    let expected = dir.join("relative.sock");
    assert_eq!(
        listening["payload"]["listening"],
        expected.to_str().unwrap()
    );
    let mut stream = std::os::unix::net::UnixStream::connect(&expected).expect("served");
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut stream, &mut reply).unwrap();
    assert!(reply.starts_with("worker 0 "), "{reply}");
    assert!(
        !std::path::Path::new("relative.sock").exists(),
        "not in the primary's directory"
    );
    drop(tb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// With an open-file limit of 64 for the primary and its workers, a storm of 200 concurrent
/// clients exhausts the fds: the primary's accept loop backs off and retries, never wedges,
/// and a worker that cannot take a connection drops that one and goes on. Every connection
/// after the storm is served.
#[test]
fn after_an_fd_exhaustion_storm_every_connection_is_served() {
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_LISTEN", &addr),
        ("TB_NOFILE", "64"),
        ("TB_DELAY_MS", "100"),
    ]);
    tb.wait_event("listening", None);
    tb.wait_event("listening", None);
    let storm: Vec<_> = (0..200)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let r = common::fetch(&addr);
                if std::env::var("DBG_STORM").is_ok() {
                    eprintln!(
                        "storm client: {:?}",
                        r.as_ref().map(|s| s.len()).map_err(|e| e.kind())
                    );
                }
                r.is_ok_and(|r| !r.is_empty())
            })
        })
        .collect();
    let served_in_storm = storm
        .into_iter()
        .filter_map(|t| t.join().ok())
        .filter(|served| *served)
        .count();
    // After the storm: every one of these is answered, each within 5 s.
    for probe in 0..20 {
        let started = std::time::Instant::now();
        let reply = common::fetch(&addr).unwrap_or_default();
        assert!(
            common::answered_by(&reply).is_some(),
            "probe {probe} after the storm not served ({:?}): {reply:?}",
            started.elapsed()
        );
    }
    eprintln!("EMFILE storm: {served_in_storm} of 200 served during it; 20 of 20 after");
    let gone: Vec<&Value> = tb
        .seen
        .iter()
        .filter(|e| e["event"] == "exit" || e["event"] == "worker-error")
        .collect();
    assert!(gone.is_empty(), "workers left: {gone:?}");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Listeners bound for a worker are released when no worker holds them any more: the port
/// refuses connections instead of parking them, and the primary's fds come back.
#[test]
fn listeners_are_released_when_their_last_worker_leaves() {
    // 40 addresses on loopback (127.0.0.2, ...), each a listener of its own.
    let port = common::free_port();
    let extra: Vec<String> = (2..42)
        .map(|host| format!("127.0.0.{host}:{port}"))
        .collect();
    let list = extra.join(",");
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_RESTART", "never"),
        ("TB_EXTRA_LISTEN_1", &list),
    ]);
    tb.wait_online(2);
    let primary = tb.pid();
    tb.wait_for("extra listeners", SOON, |e| {
        e["payload"]["extra_listening"] == 40
    });
    let with_listeners = open_fds(primary);
    assert!(
        std::net::TcpStream::connect(&extra[0]).is_ok(),
        "the primary accepts for the worker"
    );
    tb.command("send 1 {\"cmd\":\"exit\",\"code\":0}");
    tb.wait_event("exit", Some(1));
    let refused = common::eventually(SOON, || {
        extra.iter().all(|a| {
            std::net::TcpStream::connect(a)
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
        })
    });
    assert!(refused, "every released port refuses connections");
    let after = open_fds(primary);
    eprintln!("primary fds: {with_listeners} with 40 extra listeners, {after} after release");
    assert!(
        after + 40 <= with_listeners,
        "the 40 listeners' fds came back: {with_listeners} -> {after}"
    );
}

/// A listener whose worker restarts is kept for the replacement, which finds it again.
#[test]
fn a_listener_waits_for_the_replacement_of_a_restarting_worker() {
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_LISTEN", &addr)]);
    let first = tb.wait_event("listening", Some(0));
    // A crash (not `kill()`, which is a stop on purpose): the slot restarts.
    let pid = nix::unistd::Pid::from_raw(first["pid"].as_u64().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    tb.wait_event("exit", Some(0));
    let again = tb.wait_event("listening", Some(0));
    assert_ne!(first["pid"], again["pid"]);
    let reply = common::fetch(&addr).expect("served by the replacement");
    assert!(reply.starts_with("worker 0 "), "{reply}");
}

/// A worker that says READY=1 on its notify socket only once a marker file exists.
const READY_ON_MARKER: &str = r#"
import os, socket, time
marker = os.environ["TB_READY_MARKER"]
while not os.path.exists(marker):
    time.sleep(0.02)
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.connect(os.environ["NOTIFY_SOCKET"])
n.send(b"READY=1")
while True:
    time.sleep(1)
"#;

/// The value of `name` in the environment of process `pid`.
fn environ_of(pid: u32, name: &str) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|b| *b == 0).find_map(|entry| {
        let entry = std::str::from_utf8(entry).ok()?;
        entry.strip_prefix(&format!("{name}=")).map(str::to_string)
    })
}

fn status(tb: &mut Testbed) -> Value {
    tb.command("status");
    tb.wait_for("status", SOON, |e| e["command"] == "status")
}

/// Another local process cannot mark a worker ready or stopping through its notify socket:
/// the socket's directory is private and every message is checked against its sender's
/// credentials, as systemd's NotifyAccess= does.
#[test]
fn notify_messages_from_outside_a_worker_are_dropped() {
    let dir = std::env::temp_dir().join(format!("forkline-edges-notify-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ready");
    let _ = std::fs::remove_file(&marker);
    let args = format!("-c\u{1f}{READY_ON_MARKER}");
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "python3"),
        ("TB_ARGS", &args),
        ("TB_NOTIFY", "1"),
        ("TB_READY_MARKER", marker.to_str().unwrap()),
    ]);
    let pid = tb.wait_event("fork", Some(0))["pid"].as_u64().unwrap() as u32;
    let mut path = None;
    assert!(common::eventually(SOON, || {
        path = environ_of(pid, "NOTIFY_SOCKET");
        path.is_some()
    }));
    let path = path.unwrap();
    let dir_mode = std::fs::metadata(std::path::Path::new(&path).parent().unwrap())
        .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
        .unwrap();
    assert_eq!(dir_mode, 0o700, "a private directory");

    // This test process is not in the worker's process group: its READY=1 is dropped.
    let attacker = std::os::unix::net::UnixDatagram::unbound().unwrap();
    attacker.send_to(b"READY=1", &path).expect("sent");
    let ready = tb.try_wait_for(std::time::Duration::from_secs(1), |e| e["event"] == "ready");
    assert!(
        ready.is_none(),
        "a stranger made the worker ready: {ready:?}"
    );
    assert!(status(&mut tb)["notify_rejected"].as_u64().unwrap() >= 1);

    if nix::unistd::Uid::effective().is_root() {
        // Another user cannot even reach the socket.
        let sent = std::process::Command::new("python3")
            .args(["-c", "import socket,sys; s=socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.sendto(b'STOPPING=1', sys.argv[1])", &path])
            .uid(65534)
            .gid(65534)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!sent.success(), "user nobody reached the notify socket");
    } else {
        eprintln!("skipped the second-user part: it needs root to run a process as nobody");
    }

    // The worker itself is heard.
    std::fs::write(&marker, b"").unwrap();
    tb.wait_event("ready", Some(0));
    // A stranger's STOPPING=1 does not take it out of service.
    attacker.send_to(b"STOPPING=1", &path).expect("sent");
    assert!(common::eventually(SOON, || {
        status(&mut tb)["notify_rejected"].as_u64().unwrap() >= 2
    }));
    assert_eq!(status(&mut tb)["slots"][0]["state"], "ready");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Python server on `$PORT` that listens at once but says READY=1 only once a marker file
/// exists.
const PORT_SERVER_READY_ON_MARKER: &str = r#"
import os, socket, threading, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(128)
def ready():
    while not os.path.exists(os.environ["TB_READY_MARKER"]):
        time.sleep(0.02)
    n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    n.connect(os.environ["NOTIFY_SOCKET"])
    n.send(b"READY=1")
threading.Thread(target=ready, daemon=True).start()
while True:
    c, _ = s.accept()
    c.sendall(f"worker {os.environ['FORKLINE_WORKER_ID']} {os.getpid()}\n".encode())
    c.close()
"#;

/// Proxy mode sends no connection to a worker before it is ready, even though its port already
/// accepts: the client waits (in the proxy's queue) and is served once the worker said READY=1.
#[test]
fn proxy_mode_routes_only_to_ready_workers() {
    let dir = std::env::temp_dir().join(format!("forkline-edges-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("ready");
    let _ = std::fs::remove_file(&marker);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let args = format!("-c\u{1f}{PORT_SERVER_READY_ON_MARKER}");
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "python3"),
        ("TB_ARGS", &args),
        ("TB_MODE", "proxy"),
        ("TB_PREBIND", &addr),
        ("TB_NOTIFY", "1"),
        ("TB_READY_MARKER", marker.to_str().unwrap()),
    ]);
    let pid = tb.wait_event("fork", Some(0))["pid"].as_u64().unwrap() as u32;
    // Its port accepts: it is up, but not ready.
    assert!(common::eventually(SOON, || {
        environ_of(pid, "PORT")
            .and_then(|port| std::net::TcpStream::connect(format!("127.0.0.1:{port}")).ok())
            .is_some()
    }));
    let client = {
        let addr = addr.clone();
        std::thread::spawn(move || {
            let reply = common::fetch(&addr).unwrap_or_default();
            (reply, std::time::Instant::now())
        })
    };
    // The client waits while the worker is not ready.
    let early = tb.try_wait_for(std::time::Duration::from_millis(700), |e| {
        e["event"] == "ready"
    });
    assert!(early.is_none());
    std::fs::write(&marker, b"").unwrap();
    tb.wait_event("ready", Some(0));
    let ready_at = std::time::Instant::now();
    let (reply, answered_at) = client.join().unwrap();
    assert!(reply.starts_with("worker 0 "), "{reply:?}");
    assert!(
        answered_at + std::time::Duration::from_millis(100) >= ready_at,
        "served before the worker was ready"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A worker that is never ready is killed after the ready timeout and replaced, the first
/// workers included; the log and a `worker-error` event say why.
#[test]
fn a_worker_never_ready_is_replaced_after_the_ready_timeout() {
    let args = "-c\u{1f}import time; time.sleep(300)";
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "python3"),
        ("TB_ARGS", args),
        ("TB_NOTIFY", "1"),
        ("TB_READY_TIMEOUT_MS", "800"),
    ]);
    let first = tb.wait_event("fork", Some(0));
    let error = tb.wait_event("worker-error", Some(0));
    assert_eq!(error["error"], "not ready within 800ms", "{error}");
    let exit = tb.wait_event("exit", Some(0));
    assert_eq!(exit["pid"], first["pid"]);
    assert_eq!(exit["signal"], 9);
    let again = tb.wait_event("fork", Some(0));
    assert_ne!(again["pid"], first["pid"], "replaced");
}

/// A stopped worker (SIGSTOP, no watchdog) keeps no connection: what it leaves unread past the
/// handoff timeout is taken back and served by the others, it gets one connection at a time
/// while stuck, and it serves again once it reads again.
#[test]
fn connections_handed_to_a_stopped_worker_are_taken_back_and_served_elsewhere() {
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_LISTEN", &addr),
        ("TB_HANDOFF_TIMEOUT_MS", "500"),
    ]);
    tb.wait_event("listening", None);
    let second = tb.wait_event("listening", None);
    let stopped_id = second["id"].as_u64().unwrap();
    let stopped = nix::unistd::Pid::from_raw(second["pid"].as_u64().unwrap() as i32);
    // The worker says it listens once it has read the primary's answer: stopped before that,
    // the answer would sit unread ahead of its handoffs, which cannot be taken back past it.
    let says_it_listens = |e: &Value| {
        e["event"] == "message" && e["id"] == stopped_id && e["payload"].get("listening").is_some()
    };
    if !tb.seen.iter().any(says_it_listens) {
        tb.wait_for(
            "the worker's own word that it listens",
            SOON,
            says_it_listens,
        );
    }
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // Stopped for real: a thread woken by a handoff before the stop takes effect reads it.
    assert!(common::eventually(SOON, || {
        common::all_threads_stopped(stopped.as_raw() as u32)
    }));
    let mut slowest = std::time::Duration::ZERO;
    for n in 0..30 {
        let started = std::time::Instant::now();
        let reply = common::fetch(&addr).unwrap_or_default();
        slowest = slowest.max(started.elapsed());
        assert!(
            common::answered_by(&reply).is_some_and(|id| id != stopped_id),
            "connection {n}: {reply:?} after {:?}",
            started.elapsed()
        );
    }
    eprintln!("stopped worker: 30 of 30 served by the other, slowest {slowest:?}");
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
    let back = common::eventually(SOON, || {
        common::fetch(&addr)
            .ok()
            .and_then(|r| common::answered_by(&r))
            == Some(stopped_id)
    });
    assert!(back, "the worker serves again once it reads again");
}

/// Resident memory of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// 200 workers in a row each send the primary one of 20 kinds of malformed or hostile IPC
/// (seeded: `TB_FUZZ_SEED` and the worker's pid, printed per case): every one ends with the
/// worker killed or gone and replaced, the primary keeps serving, and its fds and memory come
/// back to where they were.
#[test]
fn two_hundred_fuzz_cases_of_bad_ipc_leave_the_primary_as_it_was() {
    let dir = std::env::temp_dir().join(format!("forkline-edges-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("fuzz");
    let _ = std::fs::remove_file(&marker);
    let addr = format!("127.0.0.1:{}", common::free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "4"),
        ("TB_LISTEN", &addr),
        ("TB_BAD_IF", marker.to_str().unwrap()),
        ("TB_BAD", "fuzz"),
        ("TB_FUZZ_SEED", "20261130"),
        ("TB_MIN_UPTIME_MS", "0"),
        ("TB_BACKOFF_MS", "50"),
        ("TB_BACKOFF_MAX_MS", "50"),
    ]);
    let primary = tb.pid();
    let workers: Vec<u64> = (0..4)
        .map(|_| tb.wait_event("listening", None)["pid"].as_u64().unwrap())
        .collect();
    let (fds_before, rss_before) = (open_fds(primary), rss_kib(primary));

    std::fs::write(&marker, b"").unwrap();
    for pid in workers {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let mut cases = 0;
    let mut killed = 0;
    while cases < 204 {
        let exit = tb.wait_for(
            "a fuzz worker's end",
            std::time::Duration::from_secs(60),
            |e| e["event"] == "exit",
        );
        cases += 1;
        if exit["signal"] == 9 {
            killed += 1;
        }
    }
    std::fs::remove_file(&marker).unwrap();
    // Well-behaved workers again in every slot, serving.
    let mut back = std::collections::HashSet::new();
    while back.len() < 4 {
        let e = tb.wait_for(
            "a well-behaved worker",
            std::time::Duration::from_secs(60),
            |e| e["event"] == "listening",
        );
        back.insert(e["id"].as_u64().unwrap());
    }
    assert!(common::answered_by(&common::fetch(&addr).unwrap()).is_some());
    // Released listeners and finished tasks: the fds come back.
    let settled = common::eventually(SOON, || open_fds(primary) <= fds_before + 2);
    let (fds_after, rss_after) = (open_fds(primary), rss_kib(primary));
    eprintln!(
        "fuzz: {} cases ({killed} killed by the primary); primary fds {fds_before} -> \
         {fds_after}, RSS {rss_before} -> {rss_after} KiB",
        cases - 4
    );
    assert!(settled, "fds {fds_before} -> {fds_after}");
    assert!(
        rss_after <= rss_before + 4096,
        "RSS {rss_before} -> {rss_after} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
