//! Steer mode with real processes on loopback: the kernel spreads connections round-robin over
//! the ready workers' own sockets (a BPF program forkline loads), or by least-conn from the
//! workers' load reports; a worker SIGKILLed with
//! connections queued on its socket loses none of them (they move to another worker, or wait
//! for the slot's replacement); and where BPF is refused (`FORKLINE_TEST_NO_BPF`), the
//! fallback is taken and reported. Each test that binds a reuseport group runs in a network
//! namespace of its own where one can be made (as root): any process of the same user may
//! join a SO_REUSEPORT port, so two tests that picked the same free port would share
//! connections.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::{answered_by, eventually, SOON};
use common::{free_port, in_private_netns, kill_a_worker_with_a_queue, listening_pid, Testbed};
use serde_json::Value;

/// Starts `workers` workers in steer mode on a free port with `extra` settings and waits until
/// all listen (a worker is steered to from its `listening` event on: it is ready at its
/// handshake, before it listens).
fn steer_cluster(workers: usize, extra: &[(&str, &str)]) -> (Testbed, u16) {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let n = workers.to_string();
    let mut env = vec![
        ("TB_MODE", "steer"),
        ("TB_WORKERS", n.as_str()),
        ("TB_LISTEN", address.as_str()),
    ];
    env.extend_from_slice(extra);
    let mut tb = Testbed::start(&env);
    for _ in 0..workers {
        tb.wait_event("listening", None);
    }
    (tb, port)
}

/// How long process `pid` has run (zero once it is gone).
fn age(pid: u32) -> Duration {
    let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64;
    let started = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let fields: Vec<String> = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .map(str::to_string)
                .collect();
            // Field 22, `starttime`, is the 20th after the command name.
            fields.get(19)?.parse::<f64>().ok()
        });
    let uptime = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|u| u.split_whitespace().next()?.parse::<f64>().ok());
    match (started, uptime) {
        (Some(started), Some(uptime)) => {
            Duration::from_secs_f64((uptime - started / ticks).max(0.0))
        }
        _ => Duration::ZERO,
    }
}

/// The `status` reply.
fn status(tb: &mut Testbed) -> Value {
    tb.command("status");
    tb.wait_event("reply", None)
}

/// True when the kernel steers here; else says why the test is skipped.
fn bpf_steers(tb: &mut Testbed) -> bool {
    let status = status(tb);
    if status["steering"] == "bpf-round-robin" || status["steering"] == "bpf-least-conn" {
        assert_eq!(status["migration"], "bpf", "{status}");
        return true;
    }
    eprintln!("skipped: no BPF here (steering {})", status["steering"]);
    false
}

/// Makes `total` connections from `threads` client threads at once and counts who answered
/// each (worker id); panics on a connection that got no answer.
fn spread(port: u16, total: usize, threads: usize) -> BTreeMap<u64, usize> {
    let clients: Vec<_> = (0..threads)
        .map(|t| {
            let n = total / threads + usize::from(t < total % threads);
            std::thread::spawn(move || {
                let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
                for _ in 0..n {
                    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                    stream.set_read_timeout(Some(SOON)).unwrap();
                    let mut reply = String::new();
                    stream.read_to_string(&mut reply).expect("a reply");
                    let id = answered_by(&reply)
                        .unwrap_or_else(|| panic!("not a worker reply: {reply:?}"));
                    *counts.entry(id).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts = BTreeMap::new();
    for client in clients {
        for (id, n) in client.join().unwrap() {
            *counts.entry(id).or_default() += n;
        }
    }
    counts
}

#[test]
fn steer_spreads_2000_connections_over_4_workers_within_5_percent() {
    let run = || {
        let (mut tb, port) = steer_cluster(4, &[]);
        if !bpf_steers(&mut tb) {
            return;
        }
        let counts = spread(port, 2000, 8);
        eprintln!("{counts:?}");
        assert_eq!(counts.values().sum::<usize>(), 2000, "{counts:?}");
        assert_eq!(counts.len(), 4, "{counts:?}");
        for (id, n) in &counts {
            // 500 each, ±5 % (strict round-robin gives exactly 500).
            assert!(
                (475..=525).contains(n),
                "worker {id}: {n} of 2000 ({counts:?})"
            );
        }
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

/// Worker 0 of two is stopped, clients connect (round-robin: half of them queue on its
/// socket), then it is SIGKILLed, young, so its slot restarts only after a backoff and its
/// socket closes: the queued connections move to worker 1 (the program migrates them).
#[test]
fn steer_a_killed_workers_queue_moves_to_the_other_worker() {
    let run = || {
        let (mut tb, port) = steer_cluster(
            2,
            &[("TB_MIN_UPTIME_MS", "600000"), ("TB_BACKOFF_MS", "300")],
        );
        if !bpf_steers(&mut tb) {
            return;
        }
        let outcome = kill_a_worker_with_a_queue(&tb, port, 40);
        // Round-robin: exactly every other connection went to worker 0.
        assert_eq!(outcome.queued, 20, "{outcome:?}");
        assert_eq!(outcome.resets, 0, "{outcome:?}");
        assert_eq!(outcome.by_worker.get(&1), Some(&40), "{outcome:?}");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

/// The same with an immediate restart (the worker was stable): the slot keeps its socket, out
/// of the steering map until the replacement is ready, and the replacement serves what was
/// queued on it.
#[test]
fn steer_a_killed_workers_queue_waits_for_its_replacement() {
    let run = || {
        let (mut tb, port) = steer_cluster(2, &[("TB_MIN_UPTIME_MS", "0")]);
        if !bpf_steers(&mut tb) {
            return;
        }
        let killed = listening_pid(&tb, 0);
        // A worker younger than a second counts as dying young whatever the settings, and
        // restarts after a backoff.
        assert!(
            eventually(SOON, || age(killed) > Duration::from_millis(1500)),
            "worker 0 is gone"
        );
        let outcome = kill_a_worker_with_a_queue(&tb, port, 40);
        assert_eq!(outcome.queued, 20, "{outcome:?}");
        assert_eq!(outcome.resets, 0, "{outcome:?}");
        assert_eq!(outcome.by_worker.get(&0), Some(&20), "{outcome:?}");
        assert_eq!(outcome.by_worker.get(&1), Some(&20), "{outcome:?}");
        assert!(!outcome.by_pid.contains_key(&killed), "{outcome:?}");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

/// Least-conn in the kernel: worker 0 holds every connection until its client speaks, worker 1
/// answers at once and reports each close, so its count stays near 0 while worker 0's only
/// grows. The program picks the smaller count (ties: round-robin), so worker 0 gets a
/// connection only while its count is at most worker 1's. With every report in before the
/// next connection that is 1 of 40; a report still on its way when the client connects again
/// lets worker 1's count read 1 or 2 for a moment (2 or 3 of 40 seen on a busy machine).
/// Round-robin would send worker 0 20; least-conn without the reports would too.
#[test]
fn steer_least_conn_sends_new_connections_to_the_less_busy_worker() {
    let run = || {
        let (mut tb, port) = steer_cluster(2, &[("TB_BALANCE", "least-conn"), ("TB_HOLD_0", "1")]);
        if !bpf_steers(&mut tb) {
            return;
        }
        assert_eq!(status(&mut tb)["steering"], "bpf-least-conn");
        let mut held = Vec::new();
        let mut by_worker: BTreeMap<u64, usize> = BTreeMap::new();
        for _ in 0..40 {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut reply = String::new();
            match stream.read_to_string(&mut reply) {
                Ok(_) => {
                    let id = answered_by(&reply).expect("a worker reply");
                    *by_worker.entry(id).or_default() += 1;
                }
                // No answer yet: held by worker 0, or slow; told apart below.
                Err(_) => held.push(stream),
            }
        }
        for mut stream in held {
            stream.set_read_timeout(Some(SOON)).unwrap();
            stream.write_all(b"x").unwrap();
            let mut reply = String::new();
            stream.read_to_string(&mut reply).expect("a held reply");
            let id = answered_by(&reply).expect("a worker reply");
            *by_worker.entry(id).or_default() += 1;
        }
        assert_eq!(by_worker.values().sum::<usize>(), 40, "{by_worker:?}");
        let on_busy = by_worker.get(&0).copied().unwrap_or(0);
        assert!(
            on_busy <= 6,
            "{on_busy} of 40 on the busy worker: {by_worker:?}"
        );
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

/// BPF refused, library workers that listen through the primary: round-robin in the primary.
#[test]
fn steer_without_bpf_falls_back_to_round_robin_for_library_workers() {
    let run = || {
        let (mut tb, port) = steer_cluster(2, &[("FORKLINE_TEST_NO_BPF", "1")]);
        // Each worker says which mode its listener got.
        let said = |e: &Value| e["event"] == "message" && e["payload"].get("mode").is_some();
        while tb.seen.iter().filter(|e| said(e)).count() < 2 {
            tb.wait_for("a worker's listener mode", SOON, said);
        }
        for e in tb.seen.iter().filter(|e| said(e)) {
            assert_eq!(e["payload"]["mode"], "round-robin", "{e}");
        }
        let status = status(&mut tb);
        assert_eq!(status["steering"], "fallback-round-robin", "{status}");
        let counts = spread(port, 40, 2);
        assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
        assert_eq!(counts.len(), 2, "{counts:?}");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

/// BPF refused, a listener bound up front (as the CLI binds for plain programs): reuseport,
/// each worker on its own socket, the kernel hashing.
#[test]
fn steer_without_bpf_falls_back_to_reuseport_with_listeners_bound_up_front() {
    let run = || {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let (mut tb, _) = steer_cluster(
            2,
            &[
                ("FORKLINE_TEST_NO_BPF", "1"),
                ("TB_PREBIND", address.as_str()),
                ("TB_LISTEN", address.as_str()),
            ],
        );
        let status = status(&mut tb);
        assert_eq!(status["steering"], "fallback-reuseport", "{status}");
        assert_ne!(status["migration"], "bpf", "{status}");
        let counts = spread(port, 40, 2);
        assert_eq!(counts.values().sum::<usize>(), 40, "{counts:?}");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

#[test]
fn outside_steer_mode_status_reports_no_steering() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut tb = Testbed::start(&[
        ("TB_MODE", "reuseport"),
        ("TB_WORKERS", "1"),
        ("TB_LISTEN", address.as_str()),
    ]);
    tb.wait_event("listening", None);
    assert_eq!(status(&mut tb)["steering"], Value::Null);
}
