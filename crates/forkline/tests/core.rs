//! The library core with real processes: roles and ids, messages both ways, restarts with
//! backoff, Node's `Never` policy, graceful shutdown, no orphans, and bad input.

mod common;

use std::time::Duration;

use common::{alive, eventually, Testbed, SOON};
use nix::sys::signal::Signal;
use serde_json::Value;

#[test]
fn workers_come_online_with_ids_0_to_n() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "3")]);
    let online = tb.wait_online(3);
    let ids: Vec<u64> = online.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![0, 1, 2]);
    let pids: std::collections::HashSet<u32> = online.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(pids.len(), 3, "three distinct processes");
    assert!(pids.iter().all(|pid| alive(*pid)));
}

#[test]
fn messages_round_trip_both_ways() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "2")]);
    let online = tb.wait_online(2);
    for (id, pid) in &online {
        tb.command(&format!("send {id} {{\"n\":{id},\"text\":\"héllo\"}}"));
        let reply = tb.wait_for("echo", SOON, |e| e["event"] == "message" && e["id"] == *id);
        assert_eq!(reply["payload"]["echo"]["n"], *id);
        assert_eq!(reply["payload"]["echo"]["text"], "héllo");
        assert_eq!(reply["payload"]["pid"], *pid);
        assert_eq!(reply["payload"]["id"], *id);
    }
}

/// Messages to a worker that stopped reading wait for buffer space in the primary (1.2 MB,
/// several socket buffers) and all arrive, in order, once it reads again.
#[test]
fn messages_to_a_stopped_worker_wait_for_buffer_space_and_arrive_in_order() {
    const COUNT: u64 = 40;
    let mut tb = Testbed::start(&[("TB_WORKERS", "1")]);
    let pid = nix::unistd::Pid::from_raw(tb.wait_online(1)[0].1 as i32);
    nix::sys::signal::kill(pid, Signal::SIGSTOP).unwrap();
    let pad = "x".repeat(30 * 1024);
    for n in 0..COUNT {
        tb.command(&format!("send 0 {{\"n\":{n},\"pad\":\"{pad}\"}}"));
    }
    for _ in 0..COUNT {
        let reply = tb.wait_for("send reply", SOON, |e| {
            e["event"] == "reply" && e["command"] == "send"
        });
        assert!(reply.get("error").is_none(), "{reply}");
    }
    nix::sys::signal::kill(pid, Signal::SIGCONT).unwrap();
    for n in 0..COUNT {
        let echo = tb.wait_for("echo", SOON, |e| {
            e["event"] == "message" && e["payload"]["echo"]["n"].is_u64()
        });
        assert_eq!(echo["payload"]["echo"]["n"], n, "in order");
    }
}

#[test]
fn crashing_worker_restarts_with_growing_delays_and_keeps_its_id() {
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_BEHAVIOR", "crash"),
        ("TB_BACKOFF_MS", "100"),
        ("TB_MIN_UPTIME_MS", "5000"),
    ]);
    // Exit → fork gaps for the first restarts: 100, 200, 400 ms.
    let mut gaps = Vec::new();
    let mut last_exit = tb.wait_event("exit", Some(0))["ms"].as_u64().unwrap();
    for _ in 0..3 {
        let fork = tb.wait_event("fork", None);
        assert_eq!(fork["id"], 0, "the replacement keeps slot id 0");
        gaps.push(fork["ms"].as_u64().unwrap() - last_exit);
        last_exit = tb.wait_event("exit", Some(0))["ms"].as_u64().unwrap();
    }
    let restarting: Vec<u64> = tb
        .seen
        .iter()
        .filter(|e| e["event"] == "restarting")
        .map(|e| e["delay_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(&restarting[..3], &[100, 200, 400], "seen: {:#?}", tb.seen);
    // The testbed stamps an event when its handler prints it, a few ms after it happened on a
    // loaded machine: the exit may be stamped late by that much.
    const STAMP_SLACK_MS: u64 = 10;
    for (gap, nominal) in gaps.iter().zip([100u64, 200, 400]) {
        assert!(
            gap + STAMP_SLACK_MS >= nominal,
            "gap {gap} ms shorter than backoff {nominal} ms"
        );
    }
    assert!(
        gaps[0] < gaps[1] && gaps[1] < gaps[2],
        "gaps grow: {gaps:?}"
    );
    // Crash-loop state becomes visible after 5 young deaths.
    tb.wait_for("crash loop", Duration::from_secs(30), |e| {
        e["event"] == "restarting" && e["crash_loop"] == true
    });
    tb.command("status");
    let status = tb.wait_for("status", SOON, |e| e["command"] == "status");
    assert_eq!(status["slots"][0]["crash_loop"], true);
}

#[test]
fn never_policy_leaves_worker_dead_and_user_code_can_fork() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_RESTART", "never")]);
    tb.wait_online(1);
    tb.command("send 0 {\"cmd\":\"exit\",\"code\":1}");
    let exit = tb.wait_event("exit", Some(0));
    assert_eq!(exit["code"], 1);
    assert_eq!(exit["exited_after_disconnect"], false);
    // Nothing restarts it on its own.
    let restarted = tb.try_wait_for(Duration::from_millis(1500), |e| {
        e["event"] == "fork" || e["event"] == "restarting"
    });
    assert!(restarted.is_none(), "Never policy restarted: {restarted:?}");
    tb.command("fork");
    let online = tb.wait_event("online", None);
    assert_eq!(online["id"], 0, "user fork reuses the free slot 0");
}

#[test]
fn disconnected_or_killed_workers_are_not_restarted() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "2")]);
    tb.wait_online(2);
    tb.command("disconnect 0");
    let exit = tb.wait_event("exit", Some(0));
    assert_eq!(exit["exited_after_disconnect"], true);
    assert_eq!(exit["code"], 0);
    tb.command("kill 1 9");
    let exit = tb.wait_event("exit", Some(1));
    assert_eq!(exit["signal"], 9);
    assert_eq!(exit["exited_after_disconnect"], true);
    let restarted = tb.try_wait_for(Duration::from_millis(1000), |e| e["event"] == "fork");
    assert!(
        restarted.is_none(),
        "restarted after a deliberate stop: {restarted:?}"
    );
}

#[test]
fn graceful_shutdown_exits_zero_when_workers_finish() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "2")]);
    let online = tb.wait_online(2);
    tb.signal(Signal::SIGTERM);
    let status = tb.wait_exit(SOON).expect("primary exits");
    assert_eq!(status.code(), Some(0));
    for (_, pid) in online {
        assert!(eventually(SOON, || !alive(pid)), "worker {pid} still alive");
    }
}

#[test]
fn graceful_shutdown_honours_the_timeout_then_kills() {
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_BEHAVIOR", "ignore-disconnect"),
        ("TB_GRACE_MS", "700"),
    ]);
    let online = tb.wait_online(2);
    let started = std::time::Instant::now();
    tb.signal(Signal::SIGTERM);
    let stopped = tb.wait_event("stopped", None);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "stopped before the timeout: {took:?}"
    );
    assert_eq!(stopped["clean"], false);
    assert_eq!(stopped["killed"], serde_json::json!([0, 1]));
    let status = tb.wait_exit(SOON).expect("primary exits");
    assert_eq!(status.code(), Some(1), "unclean shutdown exits 1");
    for (_, pid) in online {
        assert!(eventually(SOON, || !alive(pid)));
    }
}

#[test]
fn sigkill_of_the_primary_leaves_no_worker_alive() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "3")]);
    let online = tb.wait_online(3);
    tb.signal(Signal::SIGKILL);
    let start = std::time::Instant::now();
    for (_, pid) in &online {
        assert!(
            eventually(Duration::from_secs(2), || !alive(*pid)),
            "worker {pid} outlived the primary by 2 s"
        );
    }
    assert!(start.elapsed() <= Duration::from_secs(2));
}

#[test]
fn zero_workers_is_a_clear_error() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "0")]);
    let e = tb.wait_event("error", None);
    assert!(e["error"].as_str().unwrap().contains("workers"), "{e}");
    assert_eq!(tb.wait_exit(SOON).unwrap().code(), Some(2));
}

/// Starts a primary with `var=value` in its environment and expects an error naming both,
/// and exit code 2.
fn expect_env_error(var: &str, value: &str) {
    let mut tb = Testbed::start(&[(var, value)]);
    let e = tb.wait_event("error", None);
    let msg = e["error"].as_str().unwrap();
    assert!(msg.contains(var) && msg.contains(value), "{msg}");
    assert_eq!(tb.wait_exit(SOON).unwrap().code(), Some(2));
}

#[test]
fn unknown_sched_policy_is_a_clear_error() {
    expect_env_error("FORKLINE_SCHED_POLICY", "round_robin");
}

#[test]
fn bad_accept_coalesce_value_is_a_clear_error() {
    for bad in ["fast", "-1", "2000000"] {
        expect_env_error("FORKLINE_ACCEPT_COALESCE_US", bad);
    }
}

#[test]
fn missing_or_non_executable_program_is_a_clear_error() {
    let mut tb = Testbed::start(&[("TB_EXEC", "/nonexistent/forkline-worker")]);
    let e = tb.wait_event("error", None);
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("not found") && msg.contains("/nonexistent/forkline-worker"),
        "{msg}"
    );

    let dir = std::env::temp_dir().join(format!("forkline-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("not-executable");
    std::fs::write(&file, "#!/bin/sh\n").unwrap();
    let mut tb = Testbed::start(&[("TB_EXEC", file.to_str().unwrap())]);
    let e = tb.wait_event("error", None);
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("not executable") && msg.contains("not-executable"),
        "{msg}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_uid_is_a_clear_error() {
    let mut tb = Testbed::start(&[("TB_UID", "4000000000")]);
    let e = tb.wait_event("error", None);
    assert!(
        e["error"]
            .as_str()
            .unwrap()
            .contains("unknown uid 4000000000"),
        "{e}"
    );
}

#[test]
fn oversized_message_is_refused_on_send() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "1")]);
    tb.wait_online(1);
    tb.command("send 0 {\"cmd\":\"oversize\"}");
    let reply = tb.wait_for("oversize report", SOON, |e| {
        e["event"] == "message" && e["payload"].get("oversize_error").is_some()
    });
    let error = reply["payload"]["oversize_error"]
        .as_str()
        .unwrap_or_default();
    assert!(error.contains("exceeds the IPC limit"), "{error}");
    // The primary refuses to send oversized messages too.
    let big = "y".repeat(70 * 1024);
    tb.command(&format!("send 0 \"{big}\""));
    let reply = tb.wait_for("send reply", SOON, |e| e["command"] == "send");
    assert!(reply["error"]
        .as_str()
        .unwrap_or_default()
        .contains("exceeds the IPC limit"));
}

#[test]
fn worker_writing_garbage_is_killed_and_replaced() {
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_BEHAVIOR_1", "garbage"),
        ("TB_MIN_UPTIME_MS", "0"),
    ]);
    let error = tb.wait_event("worker-error", Some(1));
    assert!(
        error["error"].as_str().unwrap().contains("undecodable"),
        "{error}"
    );
    let exit = tb.wait_event("exit", Some(1));
    assert_eq!(exit["signal"], 9);
    tb.wait_for("replacement", SOON, |e| {
        e["event"] == "fork" && e["id"] == 1
    });
    // The primary is still fine: worker 0 answers.
    tb.command("send 0 {\"still\":\"here\"}");
    let reply = tb.wait_for("echo", SOON, |e| e["event"] == "message" && e["id"] == 0);
    assert_eq!(reply["payload"]["echo"]["still"], Value::from("here"));
}

#[test]
fn scaling_at_runtime_by_command_and_by_signal() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "2")]);
    tb.wait_online(2);
    tb.command("scale 3");
    let online = tb.wait_event("online", None);
    assert_eq!(online["id"], 2);
    tb.signal(Signal::SIGTTIN);
    let online = tb.wait_event("online", None);
    assert_eq!(online["id"], 3, "SIGTTIN adds slot 3");
    tb.command("scale 1");
    let mut stopped = std::collections::BTreeSet::new();
    while stopped.len() < 3 {
        let exit = tb.wait_event("exit", None);
        assert_eq!(exit["exited_after_disconnect"], true);
        stopped.insert(exit["id"].as_u64().unwrap());
    }
    assert_eq!(stopped, [1, 2, 3].into_iter().collect());
    tb.command("status");
    let status = tb.wait_for("status", SOON, |e| e["command"] == "status");
    let slots = status["slots"].as_array().unwrap();
    assert_eq!(slots.len(), 1, "{status}");
    assert_eq!(slots[0]["slot"], 0);
    // SIGTTOU never goes below one worker.
    tb.signal(Signal::SIGTTOU);
    let exit = tb.try_wait_for(Duration::from_millis(500), |e| e["event"] == "exit");
    assert!(exit.is_none(), "{exit:?}");
}

#[test]
fn sighup_reloads_every_worker() {
    let mut tb = Testbed::start(&[("TB_WORKERS", "2")]);
    let before = tb.wait_online(2);
    tb.signal(Signal::SIGHUP);
    let mut exited = std::collections::BTreeSet::new();
    while exited.len() < 2 {
        let exit = tb.wait_event("exit", None);
        exited.insert(exit["pid"].as_u64().unwrap() as u32);
    }
    let old: std::collections::BTreeSet<u32> = before.iter().map(|(_, pid)| *pid).collect();
    assert_eq!(exited, old, "the old workers were replaced");
    let online: Vec<u64> = tb
        .seen
        .iter()
        .filter(|e| e["event"] == "online")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(online.len(), 4, "two new workers came online");
}
