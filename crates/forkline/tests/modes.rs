//! Port sharing with real processes on loopback: every distribution mode, the balancing
//! strategies, re-dispatch when a worker dies under load, IPv6, Unix and UDP listeners, and bind
//! errors.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{answered_by, eventually, fetch, free_port, worker_of, Testbed, SOON};

/// Starts `workers` testbed workers listening on `address` and waits until all listen.
fn serving(workers: usize, address: &str, extra: &[(&str, &str)]) -> Testbed {
    let n = workers.to_string();
    let mut env = vec![("TB_WORKERS", n.as_str()), ("TB_LISTEN", address)];
    env.extend_from_slice(extra);
    let mut tb = Testbed::start(&env);
    for _ in 0..workers {
        tb.wait_event("listening", None);
    }
    tb
}

/// Fetches until every worker id in `0..workers` has answered, or `max` attempts.
fn ids_answering(addr: &str, workers: u64, max: usize) -> HashSet<u64> {
    let mut seen = HashSet::new();
    for _ in 0..max {
        let reply = fetch(addr).expect("fetch");
        let id = answered_by(&reply).unwrap_or_else(|| panic!("not a worker reply: {reply:?}"));
        seen.insert(id);
        if seen.len() as u64 == workers {
            break;
        }
    }
    seen
}

#[test]
fn every_mode_serves_connections_from_all_workers() {
    for mode in ["round-robin", "shared", "reuseport"] {
        let addr = format!("127.0.0.1:{}", free_port());
        let _tb = serving(2, &addr, &[("TB_MODE", mode)]);
        // Concurrent clients, so the kernel has reason to wake both workers in shared mode.
        let seen = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| ids_answering(&addr, 2, 400)))
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect::<HashSet<u64>>()
        });
        assert_eq!(seen, HashSet::from([0, 1]), "mode {mode}");
        eprintln!("mode {mode}: ok");
    }
}

#[test]
fn sched_policy_variable_chooses_the_mode_by_nodes_names() {
    for (policy, mode) in [("none", "shared"), ("rr", "round-robin")] {
        let addr = format!("127.0.0.1:{}", free_port());
        let mut tb = Testbed::start(&[
            ("TB_WORKERS", "1"),
            ("TB_LISTEN", addr.as_str()),
            ("FORKLINE_SCHED_POLICY", policy),
        ]);
        let said = tb.wait_for("the worker's listening message", SOON, |e| {
            e["event"] == "message" && e["payload"]["listening"].is_string()
        });
        assert_eq!(
            said["payload"]["mode"], mode,
            "FORKLINE_SCHED_POLICY={policy}"
        );
        assert!(answered_by(&fetch(&addr).expect("fetch")).is_some());
    }
}

#[test]
fn round_robin_spreads_2000_connections_over_4_workers_within_5_percent() {
    spreads_2000_connections_over_4_workers(&[
        ("TB_MODE", "round-robin"),
        ("TB_ACCEPT_THREADS", "1"),
    ]);
}

/// The primary's threads named `accept-N`.
fn accept_threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|tasks| {
            tasks
                .flatten()
                .filter(|task| {
                    std::fs::read_to_string(task.path().join("comm"))
                        .is_ok_and(|comm| comm.starts_with("accept-"))
                })
                .count()
        })
        .unwrap_or(0)
}

/// Below 4 workers the primary accepts on its runtime (no accept thread); from 4 on, on
/// `auto_accept_threads` threads (2 on a machine with 2 CPUs or more), and they serve and stop
/// with the cluster.
#[test]
fn accept_threads_come_with_4_workers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let three = serving(3, &addr, &[("TB_MODE", "round-robin")]);
    assert_eq!(accept_threads_of(three.pid()), 0);
    drop(three);
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = serving(4, &addr, &[("TB_MODE", "round-robin")]);
    let expected = match forkline::cli_support::auto_accept_threads(4) {
        1 => 0,
        n => n,
    };
    assert!(
        eventually(SOON, || accept_threads_of(tb.pid()) == expected),
        "{} accept threads, expected {expected}",
        accept_threads_of(tb.pid())
    );
    assert_eq!(ids_answering(&addr, 4, 400).len(), 4);
    tb.command("shutdown");
    assert!(tb.wait_exit(SOON).is_some_and(|s| s.success()));
}

#[test]
fn two_accept_threads_serve_2000_connections_spread_within_5_percent() {
    spreads_2000_connections_over_4_workers(&[
        ("TB_MODE", "round-robin"),
        ("TB_ACCEPT_THREADS", "2"),
    ]);
}

/// 8 clients fetch 250 times each from 4 workers: each worker answers 475 to 525.
fn spreads_2000_connections_over_4_workers(extra: &[(&str, &str)]) {
    let addr = format!("127.0.0.1:{}", free_port());
    let _tb = serving(4, &addr, extra);
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    let mut counts = BTreeMap::new();
                    for _ in 0..250 {
                        let reply = fetch(&addr).expect("fetch");
                        *counts.entry(answered_by(&reply).unwrap()).or_insert(0u32) += 1;
                    }
                    counts
                })
            })
            .collect();
        let mut total = BTreeMap::new();
        for h in handles {
            for (id, n) in h.join().unwrap() {
                *total.entry(id).or_insert(0u32) += n;
            }
        }
        total
    });
    assert_eq!(counts.values().sum::<u32>(), 2000);
    assert_eq!(counts.len(), 4, "{counts:?}");
    for (id, n) in &counts {
        assert!(
            (475..=525).contains(n),
            "worker {id} got {n} of 2000: {counts:?}"
        );
    }
}

/// Connections waiting in the kernel's accept queue of the listening socket on `port`
/// (127.0.0.1), from `/proc/net/tcp`, where a listener's `rx_queue` is that queue's length.
fn accept_queue_length(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A"))
            .then(|| u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok())
            .flatten()
    })
}

/// True when every thread of process `pid` is stopped (state `T`).
/// Round-robin with the longest accept coalescing window (1 s, so that waiting for the timer
/// shows), coalescing whenever connections queue (`accept_coalesce_always`; the governor that
/// decides by default is tested in `coalesce.rs`). The primary is stopped while 16 clients
/// connect, so its first wake-up finds a queue: the clients' next connections wait for the
/// timer, and all are served by both workers. One client connecting again only after each
/// answer never makes a queue, so it is served at once.
#[test]
fn accept_coalescing_batches_a_queue_on_a_timer_and_never_delays_a_lone_client() {
    const CLIENTS: usize = 16;
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let tb = serving(
        2,
        &addr,
        &[
            ("TB_MODE", "round-robin"),
            ("FORKLINE_ACCEPT_COALESCE_US", "1000000"),
            ("TB_COALESCE_ALWAYS", "1"),
        ],
    );
    let primary = nix::unistd::Pid::from_raw(tb.pid() as i32);
    nix::sys::signal::kill(primary, nix::sys::signal::Signal::SIGSTOP).unwrap();
    // The stop takes effect a moment later; a connection accepted in that moment would be
    // held, unsent, until the primary resumes.
    assert!(
        eventually(SOON, || common::all_threads_stopped(tb.pid())),
        "the primary did not stop"
    );
    let (answered, took) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                s.spawn(|| {
                    (0..3)
                        .map(|_| answered_by(&fetch(&addr).expect("fetch")).expect("a reply"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while accept_queue_length(port).unwrap_or(0) < CLIENTS as u64 {
            assert!(
                Instant::now() < deadline,
                "clients did not queue up: {:?}",
                accept_queue_length(port)
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let resumed = Instant::now();
        nix::sys::signal::kill(primary, nix::sys::signal::Signal::SIGCONT).unwrap();
        let answered: Vec<u64> = clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect();
        (answered, resumed.elapsed())
    });
    assert_eq!(answered.len(), 3 * CLIENTS);
    let ids: HashSet<u64> = answered.into_iter().collect();
    assert_eq!(ids, HashSet::from([0, 1]), "both workers serve the burst");
    // The first 16 went out at once; the next ones waited for the 1 s timer.
    assert!(
        took >= Duration::from_millis(900),
        "took {took:?}: the queue was not batched on the timer"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let lone = Instant::now();
    for _ in 0..5 {
        answer_within(&addr, Duration::from_secs(5)).expect("a lone connection is answered");
    }
    assert!(
        lone.elapsed() < Duration::from_secs(2),
        "5 lone connections took {:?}, as if each waited for the 1 s window",
        lone.elapsed()
    );
}

#[test]
fn least_conn_steers_new_connections_away_from_a_busy_worker() {
    let addr = format!("127.0.0.1:{}", free_port());
    // Worker 0 holds every connection until the client speaks; worker 1 answers at once.
    let _tb = serving(
        2,
        &addr,
        &[("TB_BALANCE", "least-conn"), ("TB_HOLD_0", "1")],
    );
    let mut held = Vec::new();
    let mut on_fast = 0;
    for _ in 0..40 {
        let mut stream = TcpStream::connect(&addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut reply = String::new();
        match stream.read_to_string(&mut reply) {
            Ok(_) => {
                assert_eq!(answered_by(&reply), Some(1), "reply {reply:?}");
                on_fast += 1;
            }
            // No answer yet: most likely on the slow worker (checked below).
            Err(_) if reply.is_empty() => held.push(stream),
            // A slow answer from the fast worker on a loaded machine.
            Err(_) => on_fast += 1,
        }
    }
    // Release the held connections and check who had them.
    let mut on_busy = 0;
    for stream in held.iter_mut() {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.write_all(b"x").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        match answered_by(&reply) {
            Some(0) => on_busy += 1,
            _ => on_fast += 1,
        }
    }
    assert_eq!(on_fast + on_busy, 40);
    assert!(
        on_busy <= 4,
        "least-conn sent {on_busy} of 40 connections to the busy worker (round-robin would send 20)"
    );
}

/// Sends one connection to `addr` and classifies it: `Ok(id)` when a worker answered within
/// `wait`, `Err(stream)` when none did yet (the stream is kept to read later).
fn answer_within(addr: &str, wait: Duration) -> Result<u64, TcpStream> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut reply = String::new();
    match stream.read_to_string(&mut reply) {
        Ok(_) => Ok(answered_by(&reply).unwrap_or_else(|| panic!("reply {reply:?}"))),
        Err(_) => Err(stream),
    }
}

/// The pid of worker `id`, from its `listening` event.
fn listening_pid(tb: &Testbed, id: u64) -> nix::unistd::Pid {
    let event = tb
        .seen
        .iter()
        .find(|e| e["event"] == "listening" && e["id"] == id)
        .unwrap_or_else(|| panic!("worker {id} has not listened"));
    nix::unistd::Pid::from_raw(event["pid"].as_u64().unwrap() as i32)
}

#[test]
fn a_stopped_worker_is_handed_no_more_than_its_credit_window() {
    let addr = format!("127.0.0.1:{}", free_port());
    // Window 4: the primary asks workers to ack every 2 connections.
    let tb = serving(2, &addr, &[("TB_CREDIT_WINDOW", "4")]);
    let stopped = listening_pid(&tb, 0);
    // Warm up: both workers answer, so both have taken (and maybe not yet acked) handoffs.
    assert_eq!(ids_answering(&addr, 2, 100), HashSet::from([0, 1]));
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
    assert!(common::eventually(SOON, || common::all_threads_stopped(
        stopped.as_raw() as u32
    )));
    let mut waiting = Vec::new();
    let mut answered = BTreeMap::new();
    for _ in 0..20 {
        match answer_within(&addr, Duration::from_millis(300)) {
            Ok(id) => *answered.entry(id).or_insert(0) += 1,
            Err(stream) => waiting.push(stream),
        }
    }
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
    // Every connection is answered in the end; count who had the waiting ones.
    let mut on_stopped = 0;
    for mut stream in waiting {
        let id = worker_of(&mut stream);
        *answered.entry(id).or_insert(0) += 1;
        on_stopped += u32::from(id == 0);
    }
    assert_eq!(answered.values().sum::<u32>(), 20, "{answered:?}");
    assert!(
        on_stopped <= 4,
        "the stopped worker was handed {on_stopped} connections, over its window of 4"
    );
    // Its held-back acks arrive once it runs again: both workers take connections.
    assert_eq!(ids_answering(&addr, 2, 100), HashSet::from([0, 1]));
}

#[test]
fn a_worker_whose_channel_filled_up_is_handed_connections_again() {
    // 1200 fills the channel several times over; leave room for the test's other fds.
    let connections = 1200.min(common::raise_fd_limit().saturating_sub(200));
    let addr = format!("127.0.0.1:{}", free_port());
    // A window so large that only the IPC socket buffer limits what a stopped worker is handed.
    let tb = serving(2, &addr, &[("TB_CREDIT_WINDOW", "1000000")]);
    let stopped = listening_pid(&tb, 0);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
    assert!(common::eventually(SOON, || common::all_threads_stopped(
        stopped.as_raw() as u32
    )));
    // Enough connections, one at a time (so each travels in a packet of its own), to fill the
    // stopped worker's channel. Each client waits briefly for an answer to pace the next one;
    // those not answered yet are read after the worker resumes.
    let held: Vec<TcpStream> = (0..connections)
        .map(|_| {
            let stream = TcpStream::connect(&addr).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_millis(2)))
                .unwrap();
            let _ = stream.peek(&mut [0u8; 1]);
            stream
        })
        .collect();
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
    for mut stream in held {
        worker_of(&mut stream);
    }
    // Having drained its channel, the worker acks and takes new connections again.
    assert_eq!(ids_answering(&addr, 2, 200), HashSet::from([0, 1]));
}

#[test]
fn ip_hash_keeps_a_client_on_one_worker() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let _tb = serving(4, &addr, &[("TB_BALANCE", "ip-hash")]);
    let mut owners = BTreeMap::new();
    for source in [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.4",
        "127.0.0.5",
    ] {
        let mut seen = HashSet::new();
        for _ in 0..20 {
            let socket =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            let local: SocketAddr = format!("{source}:0").parse().unwrap();
            socket.bind(&local.into()).unwrap();
            let remote: SocketAddr = addr.parse().unwrap();
            socket.connect(&remote.into()).unwrap();
            seen.insert(worker_of(&mut socket.into()));
        }
        assert_eq!(
            seen.len(),
            1,
            "client {source} moved between workers: {seen:?}"
        );
        owners.insert(source, seen.into_iter().next().unwrap());
    }
    eprintln!("ip-hash owners: {owners:?}");
}

#[test]
fn killing_workers_under_load_leaves_no_connection_hanging() {
    killing_workers_under_load(&[]);
}

#[test]
fn with_two_accept_threads_killing_workers_under_load_leaves_no_connection_hanging() {
    killing_workers_under_load(&[("TB_ACCEPT_THREADS", "2")]);
}

/// 16 clients fetch for 3 s while 3 of 4 workers are killed in turn: no connection hangs, and
/// the few a killed worker held fail promptly.
fn killing_workers_under_load(extra: &[(&str, &str)]) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut env = vec![("TB_DELAY_MS", "20"), ("TB_MIN_UPTIME_MS", "0")];
    env.extend_from_slice(extra);
    let mut tb = serving(4, &addr, &env);
    let stop_at = Instant::now() + Duration::from_secs(3);
    let (ok, errors, hung) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..16)
            .map(|_| {
                s.spawn(|| {
                    let (mut ok, mut errors, mut hung) = (0u32, 0u32, 0u32);
                    while Instant::now() < stop_at {
                        let started = Instant::now();
                        match fetch(&addr) {
                            Ok(reply) if answered_by(&reply).is_some() => ok += 1,
                            // EOF or reset from a killed worker: a prompt error is fine.
                            Ok(_) => errors += 1,
                            Err(e)
                                if e.kind() == std::io::ErrorKind::WouldBlock
                                    || e.kind() == std::io::ErrorKind::TimedOut =>
                            {
                                hung += 1
                            }
                            Err(_) => errors += 1,
                        }
                        assert!(started.elapsed() < Duration::from_secs(10));
                    }
                    (ok, errors, hung)
                })
            })
            .collect();
        // Kill a worker three times while the clients run; each time wait for its replacement.
        let originals: Vec<u64> = tb
            .seen
            .iter()
            .filter(|e| e["event"] == "listening")
            .map(|e| e["pid"].as_u64().unwrap())
            .collect();
        for pid in originals.into_iter().take(3) {
            std::thread::sleep(Duration::from_millis(400));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            tb.wait_event("listening", None);
        }
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    });
    eprintln!("ok {ok}, prompt errors {errors}, hung {hung}");
    assert_eq!(hung, 0, "connections hung after workers died");
    assert!(ok > 100, "too few successful requests: {ok}");
    assert!(
        errors * 10 <= ok,
        "too many errors: {errors} for {ok} successes"
    );
}

#[test]
fn ipv6_listener_works() {
    let addr = format!("[::1]:{}", free_port());
    let _tb = serving(2, &addr, &[]);
    let seen = ids_answering(&addr, 2, 50);
    assert_eq!(seen, HashSet::from([0, 1]));
}

#[test]
fn port_zero_gives_every_worker_the_same_port() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "3"), ("TB_LISTEN", "127.0.0.1:0")]);
    let mut addresses = HashSet::new();
    for _ in 0..3 {
        let e = tb.wait_event("listening", None);
        addresses.insert(e["address"].as_str().unwrap().to_string());
    }
    assert_eq!(addresses.len(), 1, "{addresses:?}");
    let addr = addresses.into_iter().next().unwrap();
    assert!(!addr.ends_with(":0"));
    assert!(answered_by(&fetch(&addr).unwrap()).is_some());
}

#[test]
fn unix_socket_listener_works_and_replaces_a_stale_file() {
    let dir = std::env::temp_dir().join(format!("forkline-unix-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    // A stale socket file left by a dead server.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let path_str = path.to_str().unwrap().to_string();
    let _tb = serving(
        2,
        &path_str,
        &[("TB_KIND", "unix"), ("TB_UNIX_MODE", "660")],
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660, "socket file permissions");
    }
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        seen.insert(answered_by(&reply).unwrap());
        if seen.len() == 2 {
            break;
        }
    }
    assert_eq!(seen, HashSet::from([0, 1]));
    drop(_tb);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A Unix socket in round-robin mode with 4 workers: accepted on accept threads (the default
/// from 4 workers), every worker answers.
#[test]
fn a_unix_socket_with_4_workers_is_served_by_accept_threads() {
    let dir = std::env::temp_dir().join(format!("forkline-unix4-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("server.sock");
    let path_str = path.to_str().unwrap().to_string();
    let tb = serving(
        4,
        &path_str,
        &[("TB_KIND", "unix"), ("TB_MODE", "round-robin")],
    );
    if forkline::cli_support::auto_accept_threads(4) > 1 {
        assert!(eventually(SOON, || accept_threads_of(tb.pid()) > 1));
    }
    let mut seen = HashSet::new();
    for _ in 0..400 {
        let mut stream = std::os::unix::net::UnixStream::connect(&path).unwrap();
        stream.set_read_timeout(Some(SOON)).unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        seen.insert(answered_by(&reply).unwrap());
        if seen.len() == 4 {
            break;
        }
    }
    assert_eq!(seen, HashSet::from([0, 1, 2, 3]));
    drop(tb);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn udp_listener_is_shared_by_workers() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_LISTEN", addr.as_str()),
        ("TB_KIND", "udp"),
    ]);
    tb.wait_event("listening", None);
    tb.wait_event("listening", None);
    let client = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut answered = 0;
    let deadline = Instant::now() + SOON;
    while answered < 5 && Instant::now() < deadline {
        client.send_to(b"ping", &addr).unwrap();
        let mut buf = [0u8; 128];
        if let Ok((n, _)) = client.recv_from(&mut buf) {
            let reply = String::from_utf8_lossy(&buf[..n]).to_string();
            assert!(answered_by(&reply).is_some(), "{reply}");
            answered += 1;
        }
    }
    assert_eq!(answered, 5);
}

#[test]
fn bind_errors_reach_the_worker_naming_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_LISTEN", addr.as_str())]);
    let e = tb.wait_for("listen error", SOON, |e| {
        e["event"] == "message" && e["payload"].get("listen_error").is_some()
    });
    let msg = e["payload"]["listen_error"].as_str().unwrap();
    assert!(msg.contains(&addr), "{msg}");
    assert!(msg.to_lowercase().contains("in use"), "{msg}");

    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_LISTEN", "999.1.2.3:80")]);
    let e = tb.wait_for("listen error", SOON, |e| {
        e["event"] == "message" && e["payload"].get("listen_error").is_some()
    });
    let msg = e["payload"]["listen_error"].as_str().unwrap();
    assert!(msg.contains("999.1.2.3:80"), "{msg}");
}

#[test]
fn rolling_reload_replaces_every_worker_without_dropping_connections() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = serving(2, &addr, &[("TB_DELAY_MS", "5"), ("TB_READY", "listen")]);
    let before: HashSet<u64> = tb
        .seen
        .iter()
        .filter(|e| e["event"] == "listening")
        .map(|e| e["pid"].as_u64().unwrap())
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed) = std::thread::scope(|s| {
        let clients: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let (mut ok, mut failed) = (0u32, 0u32);
                    let give_up = Instant::now() + Duration::from_secs(60);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed)
                        && Instant::now() < give_up
                    {
                        match fetch(&addr) {
                            Ok(reply) if answered_by(&reply).is_some() => ok += 1,
                            other => {
                                eprintln!("reload: failed fetch {other:?}");
                                failed += 1
                            }
                        }
                    }
                    (ok, failed)
                })
            })
            .collect();
        let started = Instant::now();
        tb.command("reload");
        let reply = tb.wait_for("reload reply", Duration::from_secs(30), |e| {
            e["command"] == "reload"
        });
        assert!(reply.get("error").is_none(), "{reply}");
        // Both old workers exit after the reload.
        while tb.seen.iter().filter(|e| e["event"] == "exit").count() < 2 {
            tb.wait_for("old worker exit", SOON, |e| e["event"] == "exit");
        }
        // Keep the load on for a moment with the new workers alone.
        while started.elapsed() < Duration::from_millis(1500) {
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        clients
            .into_iter()
            .map(|c| c.join().unwrap())
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let after: HashSet<u64> = tb
        .seen
        .iter()
        .filter(|e| e["event"] == "listening")
        .map(|e| e["pid"].as_u64().unwrap())
        .filter(|pid| !before.contains(pid))
        .collect();
    assert_eq!(after.len(), 2, "two new workers");
    assert!(ok > 20, "{ok}");
    assert_eq!(failed, 0, "connections dropped during the reload");
}
