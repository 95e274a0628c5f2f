//! Reuseport accept queues that migrate, with real processes on loopback. Worker 0 of two is
//! stopped (SIGSTOP) while clients connect, so the connections the kernel hashes to its socket
//! queue there; then it is SIGKILLed, young, so its slot restarts only after a backoff and the
//! primary closes its copy of the socket. With migration (a BPF program, or the sysctl when BPF
//! is refused) every client is answered by worker 1; with migration off, the queued ones are
//! reset. Each test runs in a network namespace of its own (as root), so that the
//! per-namespace `net.ipv4.tcp_migrate_req` one of them sets reaches no other test, and so
//! that no other process's reuseport socket joins a group of theirs (any process of the same
//! user may bind a port another bound with SO_REUSEPORT: two tests that picked the same free
//! port would share connections).

mod common;

use common::{
    free_port, in_private_netns, kill_a_worker_with_a_queue, listening_pid, Testbed, SOON,
};
use serde_json::Value;

/// Clients per scenario: the kernel hashes about half of them to worker 0's socket.
const CLIENTS: usize = 40;

/// Starts `workers` reuseport workers on a free port with `extra` settings and waits until
/// all listen. A killed worker is always young (`TB_MIN_UPTIME_MS`), so its slot restarts
/// after a backoff, not at once with the same socket.
///
/// "All listen" is each worker's own word, not the primary's `listening` event: that one is
/// emitted as the primary sends the socket, and a worker stopped before it has read its
/// answer holds no socket yet (its queue is then nowhere in its `/proc/PID/fd`).
fn reuseport_cluster(workers: usize, extra: &[(&str, &str)]) -> (Testbed, u16) {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let n = workers.to_string();
    let mut env = vec![
        ("TB_MODE", "reuseport"),
        ("TB_WORKERS", n.as_str()),
        ("TB_LISTEN", address.as_str()),
        ("TB_MIN_UPTIME_MS", "600000"),
        ("TB_BACKOFF_MS", "300"),
    ];
    env.extend_from_slice(extra);
    let mut tb = Testbed::start(&env);
    for _ in 0..workers {
        tb.wait_for("a worker's word that it listens", SOON, |e| {
            e["event"] == "message" && e["payload"].get("listening").is_some()
        });
    }
    (tb, port)
}

/// What `status` says of migration (`null` outside reuseport mode).
fn migration_status(tb: &mut Testbed) -> Value {
    tb.command("status");
    tb.wait_event("reply", None)["migration"].clone()
}

/// `net.ipv4.tcp_migrate_req` as this thread's network namespace has it.
fn migrate_req_sysctl() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_migrate_req")
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn with_bpf_a_killed_workers_queue_moves_to_the_other_worker() {
    // Not the sysctl: a namespace of its own shows it is off, if one can be made.
    let run = || {
        let (mut tb, port) = reuseport_cluster(2, &[("TB_MIGRATION", "bpf")]);
        let status = migration_status(&mut tb);
        if status != "bpf" {
            eprintln!("skipped: no BPF here (migration {status})");
            return;
        }
        let outcome = kill_a_worker_with_a_queue(&tb, port, CLIENTS);
        assert_eq!(outcome.resets, 0, "{outcome:?}");
        // Those queued on worker 0 were answered by worker 1, before worker 0's replacement.
        assert_eq!(outcome.by_worker.get(&1), Some(&CLIENTS), "{outcome:?}");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

#[test]
fn with_migration_off_a_killed_workers_queue_is_reset() {
    let run = || {
        if migrate_req_sysctl() != "0" {
            eprintln!("skipped: net.ipv4.tcp_migrate_req is set in this namespace");
            return;
        }
        let (mut tb, port) = reuseport_cluster(2, &[("TB_MIGRATION", "off")]);
        assert_eq!(migration_status(&mut tb), "off");
        let outcome = kill_a_worker_with_a_queue(&tb, port, CLIENTS);
        // The negative control: the subject of the test above is real.
        assert!(outcome.resets >= 1, "{outcome:?}");
        assert_eq!(outcome.resets as u64, outcome.queued, "{outcome:?}");
        assert_eq!(
            outcome.by_worker.get(&1).copied().unwrap_or(0) + outcome.resets,
            CLIENTS
        );
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

#[test]
fn when_bpf_is_refused_auto_sets_the_sysctl_and_the_queue_moves() {
    // It sets a per-namespace sysctl: only in a namespace of its own, which goes away with it
    // (so nothing is left to restore).
    let ran = in_private_netns(|| {
        assert_eq!(
            migrate_req_sysctl(),
            "0",
            "a new namespace starts with it off"
        );
        let (mut tb, port) = reuseport_cluster(
            2,
            &[("TB_MIGRATION", "auto"), ("FORKLINE_TEST_NO_BPF", "1")],
        );
        assert_eq!(migration_status(&mut tb), "sysctl");
        assert_eq!(migrate_req_sysctl(), "1");
        let outcome = kill_a_worker_with_a_queue(&tb, port, CLIENTS);
        assert_eq!(outcome.resets, 0, "{outcome:?}");
        assert_eq!(outcome.by_worker.get(&1), Some(&CLIENTS), "{outcome:?}");
    });
    if ran.is_none() {
        eprintln!("skipped: it would change net.ipv4.tcp_migrate_req for every test");
    }
}

#[test]
fn bpf_asked_for_but_refused_is_off() {
    let run = || {
        if migrate_req_sysctl() != "0" {
            eprintln!("skipped: net.ipv4.tcp_migrate_req is set in this namespace");
            return;
        }
        let (mut tb, _) =
            reuseport_cluster(1, &[("TB_MIGRATION", "bpf"), ("FORKLINE_TEST_NO_BPF", "1")]);
        assert_eq!(migration_status(&mut tb), "off");
        // Never the sysctl, which Migration::Bpf does not touch.
        assert_eq!(migrate_req_sysctl(), "0");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

/// The group's last socket is not closed when its worker dies: there is no socket to migrate
/// its queue to, so it waits, still listening, for the next worker, which answers them all.
#[test]
fn the_last_socket_of_a_group_waits_for_the_next_worker() {
    let run = || {
        let (tb, port) = reuseport_cluster(1, &[("TB_MIGRATION", "off")]);
        let killed = listening_pid(&tb, 0);
        let outcome = kill_a_worker_with_a_queue(&tb, port, 5);
        assert_eq!(outcome.queued, 5, "{outcome:?}");
        assert_eq!(outcome.resets, 0, "{outcome:?}");
        assert_eq!(outcome.by_worker.get(&0), Some(&5), "{outcome:?}");
        assert!(!outcome.by_pid.contains_key(&killed), "{outcome:?}");
    };
    if in_private_netns(run).is_none() {
        run();
    }
}

#[test]
fn outside_reuseport_mode_status_reports_no_migration() {
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let mut tb = Testbed::start(&[
        ("TB_MODE", "round-robin"),
        ("TB_WORKERS", "1"),
        ("TB_LISTEN", address.as_str()),
    ]);
    tb.wait_event("listening", None);
    assert_eq!(migration_status(&mut tb), Value::Null);
}
