//! The worker lifecycle at its edges (issue #9), with real processes: reloads to a build that
//! crashes or dies after coming online, messages and stops before a worker's handshake, the
//! last packets of a worker that exits, disconnect under load, and restart storms.

mod common;

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{answered_by, free_port, Testbed, SOON};
use serde_json::Value;

/// Clients that connect one after another until stopped, counting answered and failed
/// connections (a failure: refused, reset, or no answer within 5 s).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let addr: std::net::SocketAddr = addr.parse().unwrap();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        if one_request(addr) {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    /// Stops the clients; (answered, failed).
    fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

fn one_request(addr: std::net::SocketAddr) -> bool {
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut reply = String::new();
    stream.read_to_string(&mut reply).is_ok() && answered_by(&reply).is_some()
}

/// A marker file in a fresh directory; while it exists, new testbed workers are a bad build.
fn marker(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "forkline-lifecycle-{}-{tag}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("bad-build")
}

/// An event already seen, or the next one, matching `pred` (events and command replies come
/// from different tasks, so either may be printed first).
fn seen_or_wait(tb: &mut Testbed, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    match tb.seen.iter().find(|e| pred(e)) {
        Some(found) => found.clone(),
        None => tb.wait_for(what, SOON, pred),
    }
}

fn status(tb: &mut Testbed) -> Vec<Value> {
    tb.command("status");
    let reply = tb.wait_for("status", SOON, |e| e["command"] == "status");
    reply["slots"].as_array().cloned().unwrap_or_default()
}

fn pids(slots: &[Value]) -> Vec<Option<u64>> {
    slots.iter().map(|s| s["pid"].as_u64()).collect()
}

/// A serving cluster of `workers` in round-robin mode whose next build is bad while `marker`
/// exists.
fn serving(
    workers: &str,
    marker: &std::path::Path,
    bad: &str,
    extra: &[(&str, &str)],
) -> (Testbed, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let marker = marker.to_str().unwrap().to_string();
    let mut env = vec![
        ("TB_WORKERS", workers),
        ("TB_LISTEN", addr.as_str()),
        ("TB_BAD_IF", marker.as_str()),
        ("TB_BAD", bad),
    ];
    env.extend_from_slice(extra);
    let mut tb = Testbed::start(&env);
    let n: usize = workers.parse().unwrap();
    for _ in 0..n {
        tb.wait_event("listening", None);
    }
    (tb, addr)
}

/// Samples the number of slots with a running current worker while `tb` handles `command`;
/// returns the smallest seen and the reply.
fn during(tb: &mut Testbed, command: &str) -> (usize, Value) {
    tb.command(command);
    let mut smallest = usize::MAX;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "no reply to {command}");
        tb.command("status");
        let reply = tb.wait_for("reply", SOON, |e| e["event"] == "reply");
        if reply["command"] == "status" {
            let up = pids(reply["slots"].as_array().unwrap())
                .iter()
                .filter(|p| p.is_some())
                .count();
            smallest = smallest.min(up);
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        return (smallest, reply);
    }
}

#[test]
fn reload_to_a_build_that_crashes_fails_keeps_the_old_workers_and_restarts_nothing() {
    let bad = marker("crash");
    let (mut tb, addr) = serving("2", &bad, "crash", &[("TB_READY", "listen")]);
    let before = pids(&status(&mut tb));
    let load = Load::start(&addr, 4);
    std::fs::write(&bad, b"").unwrap();
    let (smallest, reply) = during(&mut tb, "reload");
    let error = reply["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("slot 0") && error.contains("exited with code 3"),
        "{reply}"
    );
    let failed = seen_or_wait(&mut tb, "replace-failed", |e| {
        e["event"] == "replace-failed" && e["id"] == 0
    });
    assert_eq!(failed["purpose"], "reload");
    assert_eq!(failed["reason"], "exited with code 3");
    // The crashed replacement books no restart, and nothing else is started.
    let forked = tb.try_wait_for(Duration::from_secs(2), |e| e["event"] == "fork");
    assert!(forked.is_none(), "{forked:?}");
    let after = status(&mut tb);
    assert_eq!(pids(&after), before, "the old workers stay current");
    assert!(after.iter().all(|s| s["replacement_pid"].is_null()));
    let (ok, lost) = load.stop();
    eprintln!("bad reload (crash): smallest pool {smallest} of 2, {ok} answered, {lost} failed");
    assert_eq!(smallest, 2, "the pool never shrank");
    assert_eq!(lost, 0, "no connection failed ({ok} answered)");

    // The next, good build reloads, and leaves exactly two workers.
    std::fs::remove_file(&bad).unwrap();
    tb.command("reload");
    let reply = tb.wait_for("reload", Duration::from_secs(30), |e| {
        e["event"] == "reply" && e["command"] == "reload"
    });
    assert!(reply.get("error").is_none(), "{reply}");
    let now = pids(&status(&mut tb));
    assert_eq!(now.len(), 2);
    assert!(
        now.iter().all(|p| p.is_some() && !before.contains(p)),
        "{now:?}"
    );
    let mut answering = std::collections::HashSet::new();
    for _ in 0..40 {
        let reply = common::fetch(&addr).unwrap();
        answering.insert(reply.split_whitespace().nth(2).unwrap().to_string());
    }
    assert_eq!(
        answering.len(),
        2,
        "only the two new workers serve: {answering:?}"
    );
}

#[test]
fn a_replacement_that_comes_online_then_dies_fails_the_reload_and_the_pool_stays_whole() {
    let bad = marker("die");
    let (mut tb, addr) = serving("2", &bad, "die-later", &[]);
    let before = pids(&status(&mut tb));
    let load = Load::start(&addr, 4);
    std::fs::write(&bad, b"").unwrap();
    let (smallest, reply) = during(&mut tb, "reload");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("slot 0") && error.contains("exited with code 4"),
        "{reply}"
    );
    assert!(
        tb.seen
            .iter()
            .any(|e| e["event"] == "online" && !before.contains(&e["pid"].as_u64())),
        "the replacement came online before it died"
    );
    let (ok, lost) = load.stop();
    eprintln!("bad reload (online, then dies): smallest pool {smallest} of 2, {ok} answered, {lost} failed");
    assert_eq!(pids(&status(&mut tb)), before);
    assert_eq!(smallest, 2);
    assert_eq!(lost, 0, "no connection failed ({ok} answered)");
}

#[test]
fn a_replacement_that_is_never_ready_fails_with_the_timeout_named() {
    let bad = marker("slow");
    let (mut tb, _addr) = serving(
        "1",
        &bad,
        "ignore-disconnect",
        &[("TB_READY", "listen"), ("TB_READY_TIMEOUT_MS", "1500")],
    );
    let before = pids(&status(&mut tb));
    std::fs::write(&bad, b"").unwrap();
    tb.command("reload");
    let reply = tb.wait_for("reload", SOON, |e| e["command"] == "reload");
    let error = reply["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("slot 0") && error.contains("not ready within 1.5s"),
        "{reply}"
    );
    assert_eq!(pids(&status(&mut tb)), before);
}

#[test]
fn messages_sent_from_the_fork_event_arrive_after_the_handshake() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "8"), ("TB_SEND_ON_FORK", r#"{"early":1}"#)]);
    let mut echoed = std::collections::BTreeSet::new();
    while echoed.len() < 8 {
        let e = tb.wait_for("early echo", SOON, |e| {
            e["event"] == "message" && e["payload"]["echo"]["early"] == 1
        });
        echoed.insert(e["id"].as_u64().unwrap());
    }
    let sent: Vec<&Value> = tb
        .seen
        .iter()
        .filter(|e| e["event"] == "sent-on-fork")
        .collect();
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().all(|e| e["error"].is_null()), "{sent:?}");
    assert!(
        !tb.seen
            .iter()
            .any(|e| e["event"] == "exit" || e["event"] == "worker-error"),
        "no worker failed its handshake: {:#?}",
        tb.seen
    );
}

#[test]
fn a_forked_handle_is_connected_at_once_and_queues_what_is_sent() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_RESTART", "never")]);
    tb.wait_online(1);
    tb.command(r#"fork-send {"n":42}"#);
    let reply = tb.wait_for("fork-send", SOON, |e| e["command"] == "fork-send");
    assert!(reply.get("error").is_none(), "{reply}");
    assert_eq!(
        reply["connected"], true,
        "is_connected() right after fork()"
    );
    assert_eq!(reply["dead"], false);
    let id = reply["id"].as_u64().unwrap();
    let echo = tb.wait_for("echo", SOON, |e| e["event"] == "message" && e["id"] == id);
    assert_eq!(echo["payload"]["echo"]["n"], 42);
}

#[test]
fn disconnect_or_kill_before_the_process_exists_takes_effect_when_it_does() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_RESTART", "always")]);
    tb.wait_online(1);
    tb.command("fork-disconnect");
    let reply = tb.wait_for("fork-disconnect", SOON, |e| {
        e["command"] == "fork-disconnect"
    });
    let id = reply["id"].as_u64().unwrap();
    let exit = tb.wait_event("exit", Some(id));
    assert_eq!(exit["exited_after_disconnect"], true, "{exit}");
    assert_eq!(exit["code"], 0, "a graceful disconnect: {exit}");
    tb.command("fork-kill");
    let reply = tb.wait_for("fork-kill", SOON, |e| e["command"] == "fork-kill");
    let id = reply["id"].as_u64().unwrap();
    let exit = tb.wait_event("exit", Some(id));
    assert_eq!(exit["signal"], 9, "{exit}");
    assert_eq!(exit["exited_after_disconnect"], true);
    // Neither is restarted.
    let restarted = tb.try_wait_for(Duration::from_millis(1500), |e| {
        e["event"] == "restarting" || (e["event"] == "fork" && e["id"] != 0)
    });
    assert!(restarted.is_none(), "{restarted:?}");
}

#[test]
fn shutdown_right_after_start_is_clean_for_library_workers_and_plain_programs() {
    for plain in [false, true] {
        let mut env = vec![
            ("TB_WORKERS", "2"),
            ("TB_SHUTDOWN_AT_START", "1"),
            ("TB_GRACE_MS", "20000"),
        ];
        if plain {
            env.extend([
                ("TB_PLAIN", "1"),
                ("TB_EXEC", "/bin/sleep"),
                ("TB_ARGS", "300"),
            ]);
        }
        let mut tb = Testbed::start(&env);
        let stopped = tb.wait_for("stopped", Duration::from_secs(10), |e| {
            e["event"] == "stopped"
        });
        assert_eq!(stopped["clean"], true, "plain={plain}: {stopped}");
        let status = tb.wait_exit(SOON).expect("primary exits");
        assert_eq!(status.code(), Some(0));
    }
}

#[test]
fn every_packet_a_worker_sent_before_exiting_is_read_and_its_disconnect_counts() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "6"), ("TB_RESTART", "always")]);
    let online = tb.wait_online(6);
    for (id, _) in &online {
        tb.command(&format!(r#"send {id} {{"cmd":"bye","n":50}}"#));
    }
    let mut exits = std::collections::BTreeMap::new();
    while exits.len() < online.len() {
        let exit = tb.wait_event("exit", None);
        exits.insert(exit["id"].as_u64().unwrap(), exit);
    }
    for (id, exit) in &exits {
        let byes: Vec<u64> = tb
            .seen
            .iter()
            .filter(|e| e["event"] == "message" && e["id"] == *id)
            .filter_map(|e| e["payload"]["bye"].as_u64())
            .collect();
        assert_eq!(
            byes,
            (0..50).collect::<Vec<_>>(),
            "worker {id}: all last words, in order"
        );
        assert_eq!(exit["exited_after_disconnect"], true, "worker {id}: {exit}");
    }
    let restarted = tb.try_wait_for(Duration::from_millis(1500), |e| e["event"] == "restarting");
    assert!(
        restarted.is_none(),
        "a worker that disconnected itself is not restarted: {restarted:?}"
    );
}

/// Two workers listening on a free port, never restarted, and `clients` clients connecting in a
/// loop that have been answered 200 times (or for `SOON`).
fn two_workers_under_load(clients: usize) -> (Testbed, String, Load) {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_LISTEN", &addr),
        ("TB_RESTART", "never"),
    ]);
    tb.wait_event("listening", None);
    tb.wait_event("listening", None);
    let load = Load::start(&addr, clients);
    let warm = Instant::now() + SOON;
    while load.ok.load(Ordering::Relaxed) < 200 && Instant::now() < warm {
        std::thread::sleep(Duration::from_millis(10));
    }
    (tb, addr, load)
}

#[test]
fn a_disconnected_worker_gets_no_new_connections_under_load() {
    let (mut tb, addr, load) = two_workers_under_load(4);
    tb.command("disconnect 0");
    tb.wait_event("exit", Some(0));
    let (ok, lost) = load.stop();
    assert_eq!(lost, 0, "{ok} answered");
    for _ in 0..10 {
        let reply = common::fetch(&addr).unwrap();
        assert_eq!(answered_by(&reply), Some(1), "{reply}");
    }
}

/// Node's `worker.disconnect()` called in the worker itself, under load: connections the
/// primary handed to it before it learnt of the disconnect are given back and served by the
/// other worker, not lost with the closing channel.
#[test]
fn a_worker_that_disconnects_itself_under_load_loses_no_connection() {
    for round in 0..3 {
        let (mut tb, addr, load) = two_workers_under_load(8);
        tb.command(r#"send 0 {"cmd":"disconnect"}"#);
        tb.wait_event("disconnect", None);
        let (ok, lost) = load.stop();
        assert_eq!(lost, 0, "round {round}: {ok} answered, {lost} lost");
        for _ in 0..10 {
            let reply = common::fetch(&addr).unwrap();
            assert_eq!(answered_by(&reply), Some(1), "{reply}");
        }
    }
}

#[test]
fn connections_for_a_listener_a_worker_dropped_go_to_the_other_workers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_LISTEN", &addr),
        ("TB_BEHAVIOR_0", "listen-then-drop"),
    ]);
    tb.wait_event("listening", None);
    tb.wait_event("listening", None);
    tb.command(r#"send 0 {"cmd":"drop"}"#);
    tb.wait_for("dropped", SOON, |e| e["payload"]["dropped"] == true);
    // Worker 0 stays alive but serves nothing: every connection is answered by worker 1,
    // including those handed to worker 0 before the primary learnt of the drop.
    for _ in 0..100 {
        let reply = common::fetch(&addr).expect("answered");
        assert_eq!(answered_by(&reply), Some(1), "{reply:?}");
    }
    assert!(
        !tb.seen
            .iter()
            .any(|e| e["event"] == "exit" || e["event"] == "worker-error"),
        "{:#?}",
        tb.seen
    );
}

#[test]
fn a_crash_loop_with_min_uptime_zero_still_backs_off() {
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_BEHAVIOR", "crash"),
        ("TB_MIN_UPTIME_MS", "0"),
        ("TB_BACKOFF_MS", "0"),
    ]);
    tb.wait_event("fork", None);
    let start = Instant::now();
    let mut forks = 0;
    while start.elapsed() < Duration::from_secs(3) {
        if tb
            .try_wait_for(Duration::from_millis(100), |e| e["event"] == "fork")
            .is_some()
        {
            forks += 1;
        }
    }
    // 50 ms, then doubling: at most 6 restarts in 3 s (without a floor: hundreds).
    assert!(forks <= 7, "{forks} forks in 3 s");
    assert!(forks >= 3, "it does restart: {forks}");
}

/// A plain program that starts children: `sh -c` that does not exec, whose child ignores
/// SIGTERM. Each worker is a process group, and nothing of it outlives the stop.
#[test]
fn a_stop_reaches_everything_a_worker_started() {
    let script = "(trap '' TERM; exec sleep 300) & sleep 300 & wait";
    let args = format!("-c\u{1f}{script}");
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "/bin/sh"),
        ("TB_ARGS", &args),
        ("TB_GRACE_MS", "10000"),
    ]);
    let groups: Vec<u32> = tb.wait_online(2).iter().map(|(_, pid)| *pid).collect();
    for pgid in &groups {
        assert!(
            common::eventually(SOON, || common::group_members(*pgid).len() >= 3),
            "sh and its two children run in group {pgid}: {:?}",
            common::group_members(*pgid)
        );
    }
    tb.command("shutdown");
    let stopped = tb.wait_for("stopped", SOON, |e| e["event"] == "stopped");
    // SIGKILLed when the leader exited; on a loaded machine, gone a moment later.
    let gone = common::eventually(SOON, || {
        groups.iter().all(|g| common::group_members(*g).is_empty())
    });
    let left: Vec<Vec<u32>> = groups.iter().map(|g| common::group_members(*g)).collect();
    for g in &groups {
        common::kill_group(*g);
    }
    assert!(gone, "left running: {left:?}");
    assert_eq!(stopped["clean"], true, "{stopped}");
}

/// Two plain workers, each a `sh -c` wrapper with two children in its process group.
fn two_shells_with_children() -> (Testbed, Vec<u32>) {
    let args = "-c\u{1f}sleep 300 & sleep 300 & wait";
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "/bin/sh"),
        ("TB_ARGS", args),
    ]);
    let groups: Vec<u32> = tb.wait_online(2).iter().map(|(_, pid)| *pid).collect();
    for pgid in &groups {
        assert!(common::eventually(SOON, || common::group_members(*pgid)
            .len()
            >= 3));
    }
    (tb, groups)
}

/// SIGKILLs the primary, waits until `groups` are empty (bounded), and returns what was left in
/// each (killed then, so nothing outlives the test).
fn sigkill_primary_and_collect(tb: &mut Testbed, groups: &[u32]) -> Vec<Vec<u32>> {
    tb.signal(nix::sys::signal::Signal::SIGKILL);
    tb.wait_exit(SOON).expect("the primary is gone");
    common::eventually(SOON, || {
        groups.iter().all(|g| common::group_members(*g).is_empty())
    });
    let left: Vec<Vec<u32>> = groups.iter().map(|g| common::group_members(*g)).collect();
    for g in groups {
        common::kill_group(*g);
    }
    left
}

/// A worker that is a `sh -c` wrapper leaves nothing behind when its primary is SIGKILLed: the
/// parent-death signal reaches only the shell, the keeper kills the rest of its group.
#[test]
fn sigkill_of_the_primary_leaves_nothing_a_worker_started() {
    let (mut tb, groups) = two_shells_with_children();
    let left = sigkill_primary_and_collect(&mut tb, &groups);
    let gone = left.iter().all(Vec::is_empty);
    eprintln!("processes left after SIGKILL of the primary: {left:?}");
    assert!(gone, "left running: {left:?}");
}

/// The primary's keeper processes (`forkline-keeper`) among its children.
fn keepers_of(primary: u32) -> Vec<u32> {
    common::children_of(primary)
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "forkline-keeper")
        })
        .collect()
}

/// A keeper that is killed is replaced, and the new one knows every worker's group: a SIGKILL
/// of the primary afterwards still leaves nothing a worker started.
#[test]
fn a_killed_keeper_is_replaced_and_still_cleans_up() {
    let (mut tb, groups) = two_shells_with_children();
    let primary = tb.pid();
    let first = keepers_of(primary);
    assert_eq!(first.len(), 1, "one keeper: {first:?}");
    common::kill_pid(first[0] as u64);
    let replaced = common::eventually(SOON, || {
        let now = keepers_of(primary);
        now.len() == 1 && now[0] != first[0]
    });
    assert!(replaced, "keepers now: {:?}", keepers_of(primary));
    let left = sigkill_primary_and_collect(&mut tb, &groups);
    let gone = left.iter().all(Vec::is_empty);
    assert!(
        gone,
        "left running after the second keeper's turn: {left:?}"
    );
}

/// As a subreaper (or PID 1), processes that workers' children leave behind are reparented to
/// the primary; once they exit, the primary reaps them.
#[test]
fn a_subreaper_primary_reaps_orphans_that_are_not_its_workers() {
    // The inner shell starts a short sleep in the background and exits: the sleep is
    // orphaned, reparented to the primary, and exits 300 ms later.
    let args = "-c\u{1f}sh -c 'sleep 0.3 &'; exec sleep 300";
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "/bin/sh"),
        ("TB_ARGS", args),
        ("TB_SUBREAPER", "1"),
    ]);
    let workers: Vec<u32> = tb.wait_online(2).iter().map(|(_, pid)| *pid).collect();
    let primary = tb.pid();
    // Children of the primary in a worker's group that are not the worker: the orphans.
    let orphans = || -> Vec<u32> {
        common::children_of(primary)
            .into_iter()
            .filter(|(pid, pgrp)| workers.contains(pgrp) && !workers.contains(pid))
            .map(|(pid, _)| pid)
            .collect()
    };
    assert!(
        common::eventually(SOON, || !orphans().is_empty()),
        "the orphans were reparented to the primary"
    );
    // Once they exit they are reaped, zombies included.
    assert!(
        common::eventually(SOON, || orphans().is_empty()),
        "not reaped: {:?}",
        orphans()
    );
    // The workers themselves are not taken from their owner: a kill is reported with its
    // signal.
    tb.command("kill 0 9");
    let exit = tb.wait_event("exit", Some(0));
    assert_eq!(exit["signal"], 9, "{exit}");
}
