//! Programs that do not speak the protocol (here small Python servers): proxy mode, sockets by
//! the systemd convention, sd_notify readiness and watchdog, and recycling after N connections.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{answered_by, fetch, free_port, Testbed, SOON};

/// A Python server on `$PORT` answering `worker ID PID`.
const PORT_SERVER: &str = r#"
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(128)
while True:
    c, _ = s.accept()
    c.sendall(f"worker {os.environ['FORKLINE_WORKER_ID']} {os.getpid()}\n".encode())
    c.close()
"#;

/// A Python server accepting on the inherited fd 3 (`LISTEN_FDS`).
const FD3_SERVER: &str = r#"
import os, socket
assert os.environ["LISTEN_FDS"] == "1"
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(f"worker {os.environ['FORKLINE_WORKER_ID']} {os.getpid()}\n".encode())
    c.close()
"#;

/// Says READY=1 after 300 ms, then pings the watchdog only if asked.
const NOTIFY_PROGRAM: &str = r#"
import os, socket, time
time.sleep(float(os.environ.get("START_DELAY", "0.3")))
n = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
n.connect(os.environ["NOTIFY_SOCKET"])
n.send(b"STATUS=warmed up\nREADY=1")
while True:
    time.sleep(0.05)
    if os.environ.get("PING"):
        n.send(b"WATCHDOG=1")
"#;

/// Starts the testbed primary with Python workers running `script` (they do not speak the
/// protocol) and the given settings.
fn python_cluster(script: &str, settings: &[(&str, &str)]) -> Testbed {
    let args = format!("-c\u{1f}{script}");
    let mut env = vec![
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "python3"),
        ("TB_ARGS", args.as_str()),
    ];
    env.extend_from_slice(settings);
    Testbed::start(&env)
}

fn ids_answering(addr: &str, max: usize) -> HashSet<u64> {
    let mut seen = HashSet::new();
    for _ in 0..max {
        if let Ok(reply) = fetch(addr) {
            if let Some(id) = answered_by(&reply) {
                seen.insert(id);
            }
        }
        if seen.len() == 2 {
            break;
        }
    }
    seen
}

/// Two Python `$PORT` servers behind the proxy on `addr`, with `extra` settings; returns once
/// both are ready (their ports accept).
fn proxied_port_servers(addr: &str, extra: &[(&str, &str)]) -> Testbed {
    let mut env = vec![
        ("TB_WORKERS", "2"),
        ("TB_MODE", "proxy"),
        ("TB_READY", "listen"),
        ("TB_PREBIND", addr),
    ];
    env.extend_from_slice(extra);
    let mut tb = python_cluster(PORT_SERVER, &env);
    tb.wait_event("ready", None);
    tb.wait_event("ready", None);
    tb
}

#[test]
fn proxy_mode_relays_to_programs_listening_on_their_own_port() {
    let addr = format!("127.0.0.1:{}", free_port());
    let _tb = proxied_port_servers(&addr, &[]);
    assert_eq!(ids_answering(&addr, 50), HashSet::from([0, 1]));
}

#[test]
fn shared_mode_passes_the_socket_as_fd_3() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = python_cluster(
        FD3_SERVER,
        &[
            ("TB_WORKERS", "2"),
            ("TB_MODE", "shared"),
            ("TB_PREBIND", &addr),
        ],
    );
    tb.wait_online(2);
    // The kernel picks who accepts, and a worker's interpreter may still be starting on a
    // loaded machine: concurrent clients until both have answered, or the deadline.
    let mut seen = HashSet::new();
    common::eventually(SOON, || {
        seen.extend(std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ids_answering(&addr, 50)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<HashSet<u64>>()
        }));
        seen.len() == 2
    });
    assert_eq!(seen, HashSet::from([0, 1]));
}

#[test]
fn max_requests_recycles_workers_without_failing_clients() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = proxied_port_servers(&addr, &[("TB_MAX_REQUESTS", "5")]);
    // Old workers keep serving until their replacements are ready, so keep the clients coming
    // until a second generation answers; no request may fail meanwhile.
    let mut pids = HashSet::new();
    let deadline = std::time::Instant::now() + SOON;
    while pids.len() < 4 && std::time::Instant::now() < deadline {
        let reply = fetch(&addr).expect("fetch");
        assert!(answered_by(&reply).is_some(), "bad reply {reply:?}");
        pids.insert(reply.split_whitespace().nth(2).unwrap().to_string());
    }
    assert!(
        pids.len() >= 4,
        "only {} workers answered: {pids:?}",
        pids.len()
    );
    let exit = tb.wait_event("exit", None);
    assert_eq!(exit["exited_after_disconnect"], true, "{exit}");
}

#[test]
fn notify_readiness_gates_ready() {
    let mut tb = python_cluster(NOTIFY_PROGRAM, &[("TB_WORKERS", "1"), ("TB_NOTIFY", "1")]);
    let fork = tb.wait_event("fork", Some(0));
    let ready = tb.wait_event("ready", Some(0));
    let waited = ready["ms"].as_u64().unwrap() - fork["ms"].as_u64().unwrap();
    assert!(
        waited >= 250,
        "ready {waited} ms after fork, before READY=1 was sent"
    );
}

#[test]
fn watchdog_kills_and_replaces_a_silent_worker() {
    let mut tb = python_cluster(
        NOTIFY_PROGRAM,
        &[
            ("TB_WORKERS", "1"),
            ("TB_NOTIFY", "1"),
            ("TB_WATCHDOG_MS", "600"),
            ("TB_MIN_UPTIME_MS", "0"),
        ],
    );
    let error = tb.wait_event("worker-error", Some(0));
    assert!(
        error["error"].as_str().unwrap().contains("watchdog"),
        "{error}"
    );
    let exit = tb.wait_event("exit", Some(0));
    assert_eq!(exit["signal"], 9);
    tb.wait_for("replacement", SOON, |e| {
        e["event"] == "fork" && e["id"] == 0
    });
}

/// Pings every 50 ms keep a worker alive: several periods pass without trouble. (The period is
/// 30 pings long: a loaded machine may leave the Python worker unscheduled for a while.)
#[test]
fn watchdog_spares_a_worker_that_pings() {
    let mut tb = python_cluster(
        NOTIFY_PROGRAM,
        &[
            ("TB_WORKERS", "1"),
            ("TB_NOTIFY", "1"),
            ("TB_WATCHDOG_MS", "1500"),
            ("PING", "1"),
        ],
    );
    tb.wait_event("ready", Some(0));
    let trouble = tb.try_wait_for(Duration::from_millis(5000), |e| {
        e["event"] == "worker-error" || e["event"] == "exit"
    });
    assert!(trouble.is_none(), "{trouble:?}");
}

/// As with systemd, the watchdog counts from readiness: a worker whose start-up takes longer
/// than the period, and that pings once it is ready, is not killed.
#[test]
fn watchdog_is_armed_when_the_worker_is_ready() {
    let mut tb = python_cluster(
        NOTIFY_PROGRAM,
        &[
            ("TB_WORKERS", "1"),
            ("TB_NOTIFY", "1"),
            ("TB_WATCHDOG_MS", "1000"),
            ("START_DELAY", "2.5"),
            ("PING", "1"),
        ],
    );
    tb.wait_event("ready", Some(0));
    let trouble = tb.try_wait_for(Duration::from_millis(3000), |e| {
        e["event"] == "worker-error" || e["event"] == "exit"
    });
    assert!(trouble.is_none(), "{trouble:?}");
}

/// A Python echo server on `$PORT`: reads until the client half-closes, then sends it all back.
const ECHO_SERVER: &str = r#"
import os, socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(os.environ["PORT"])))
s.listen(128)
while True:
    c, _ = s.accept()
    data = bytearray()
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    c.sendall(data)
    c.close()
"#;

#[test]
fn proxy_mode_relays_bulk_data_both_ways_with_half_close() {
    use std::io::{Read, Write};
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = python_cluster(
        ECHO_SERVER,
        &[
            ("TB_WORKERS", "1"),
            ("TB_MODE", "proxy"),
            ("TB_READY", "listen"),
            ("TB_PREBIND", &addr),
        ],
    );
    tb.wait_event("ready", None);
    // 1 MiB of non-repeating bytes: large enough for the relay to switch to splice.
    let sent: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 251) as u8)
        .collect();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream.set_read_timeout(Some(SOON)).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        let sent = sent.clone();
        std::thread::spawn(move || {
            stream.write_all(&sent).unwrap();
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        })
    };
    let mut received = Vec::new();
    stream.read_to_end(&mut received).unwrap();
    writer.join().unwrap();
    assert_eq!(received.len(), sent.len());
    assert!(received == sent, "echoed bytes differ");
}

/// Proxy mode under chaos: a worker is SIGKILLed every 200 ms for 3 s (so at times none is
/// up) while clients keep connecting. Every connection ends — answered, or closed once no
/// worker came up within the queue time — and none hangs.
#[test]
fn proxy_mode_leaves_no_connection_hanging_while_workers_keep_dying() {
    use std::io::Read;
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = proxied_port_servers(&addr, &[("TB_MIN_UPTIME_MS", "0"), ("TB_BACKOFF_MS", "10")]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut answered, mut closed, mut hung) = (0, 0, 0);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(mut stream) = std::net::TcpStream::connect(&addr) else {
                        closed += 1;
                        continue;
                    };
                    // Longer than the proxy's queue time (5 s) and connect timeout (2 s).
                    stream
                        .set_read_timeout(Some(Duration::from_secs(12)))
                        .unwrap();
                    let mut reply = String::new();
                    match stream.read_to_string(&mut reply) {
                        Ok(_) if answered_by(&reply).is_some() => answered += 1,
                        Ok(_) => closed += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => hung += 1,
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => hung += 1,
                        Err(_) => closed += 1,
                    }
                }
                (answered, closed, hung)
            })
        })
        .collect();
    let chaos_until = std::time::Instant::now() + Duration::from_secs(3);
    while std::time::Instant::now() < chaos_until {
        tb.command("status");
        let status = tb.wait_for("status", SOON, |e| e["command"] == "status");
        for slot in status["slots"].as_array().unwrap() {
            if let Some(pid) = slot["pid"].as_u64().filter(|pid| *pid > 1) {
                common::kill_pid(pid);
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut answered, mut closed, mut hung) = (0, 0, 0);
    for client in clients {
        let (a, c, h) = client.join().unwrap();
        answered += a;
        closed += c;
        hung += h;
    }
    eprintln!("proxy chaos: {answered} answered, {closed} closed, {hung} hung");
    assert_eq!(hung, 0, "{answered} answered, {closed} closed");
    assert!(answered > 0);
}

/// Proxy mode stops sending connections to a stopped worker (SIGSTOP: its port still completes
/// handshakes in the kernel, but nothing answers), and sends them again once it runs.
#[test]
fn proxy_mode_skips_a_stopped_worker() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = proxied_port_servers(&addr, &[]);
    tb.command("status");
    let status = tb.wait_for("status", SOON, |e| e["command"] == "status");
    let slot = &status["slots"][1];
    let stopped_id = slot["slot"].as_u64().unwrap();
    let pid = nix::unistd::Pid::from_raw(slot["pid"].as_u64().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    assert!(common::eventually(SOON, || common::all_threads_stopped(
        pid.as_raw() as u32
    )));
    let answered_by_other = || {
        let addr: std::net::SocketAddr = addr.parse().unwrap();
        let Ok(mut stream) = std::net::TcpStream::connect(addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        let mut reply = String::new();
        let _ = std::io::Read::read_to_string(&mut stream, &mut reply);
        answered_by(&reply).is_some_and(|id| id != stopped_id)
    };
    // Connections made before the primary noticed may wait; once it has, every one is served.
    assert!(common::eventually(SOON, || (0..4).all(|_| answered_by_other())));
    for n in 0..20 {
        assert!(
            answered_by_other(),
            "connection {n} after the stop was noticed"
        );
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(common::eventually(SOON, || {
        fetch(&addr).ok().and_then(|r| answered_by(&r)) == Some(stopped_id)
    }));
}
