//! Unmodified Node programs as forkline workers over Node's own cluster channel (`--ipc node`):
//! `cluster.isWorker`, `cluster.worker.id` is the slot, every `server.listen(port)` is answered
//! with a socket of forkline's (shared, reuseport and steer modes; round-robin is
//! `node_round_robin.rs`), messages go both ways, a
//! bind error reaches the server's `'error'` as Node's, and a graceful stop is Node's
//! `disconnect`. Real Node, real sockets on 127.0.0.1.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const STARTUP: Duration = Duration::from_secs(30);

/// An HTTP server that knows nothing of forkline: a fixed port from its argument, the way an
/// app does `app.listen(3000)`. It answers with its cluster id and pid, says hello to the
/// primary, and reports a listen error as Node sees it.
const NODE_APP: &str = r#"
const http = require('http');
const cluster = require('cluster');
const server = http.createServer((req, res) =>
  res.end(`id=${cluster.worker.id} pid=${process.pid} isWorker=${cluster.isWorker}\n`));
server.on('error', (e) => process.send({ listenError: e.code, syscall: e.syscall }));
server.listen(Number(process.argv[2]), '127.0.0.1');
process.send({ hello: cluster.worker.id });
process.on('message', (m) => process.send({ echo: m, from: cluster.worker.id }));
"#;

/// `forkline run -w 2 FLAGS --control DIR/control.sock -- node SCRIPT ARGS`, the script written
/// into `dir` first.
fn start_node(dir: &TempDir, script: &str, flags: &[&str], args: &[String]) -> Running {
    require("node");
    let file = dir.write("app.js", script);
    let mut command = forkline();
    command
        .args(["run", "-w", "2"])
        .args(flags)
        .arg("--control");
    command.arg(dir.path().join("control.sock"));
    command.arg("--").arg("node").arg(&file).args(args);
    Running::spawn(command)
}

/// The app on `port`, with `--ipc node` in `mode`.
fn node_cluster(mode: &str, port: u16, dir: &TempDir) -> Running {
    let flags = ["--mode", mode, "--ipc", "node"];
    start_node(dir, NODE_APP, &flags, &[port.to_string()])
}

/// Both workers serve the port the app asked for, each a Node cluster worker with its slot as
/// `cluster.worker.id`; their messages reach the primary's log; a graceful stop (SIGTERM:
/// Node's `disconnect`) ends with every worker's own exit, code 0.
fn serves_unmodified(mode: &str) -> BTreeMap<String, usize> {
    let dir = TempDir::new(&format!("node-ipc-{mode}"));
    let port = free_port();
    let mut cluster = node_cluster(mode, port, &dir);
    let bodies = answers_from_workers(port, 2, STARTUP);
    for body in &bodies {
        assert_eq!(field(body, "isWorker"), Some("true"), "{body}");
    }
    let mut by_id = BTreeMap::new();
    for _ in 0..40 {
        let body = http_get(port).expect("an answer").body;
        *by_id
            .entry(field(&body, "id").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let ids: Vec<&String> = by_id.keys().collect();
    assert_eq!(ids, ["0", "1"], "{by_id:?}");
    for slot in 0..2 {
        let hello = format!("{{\"hello\":{slot}}}");
        let said = cluster.stderr.wait_for(STARTUP, |l| {
            l.contains("message from worker") && l.contains(&hello)
        });
        assert!(said.is_some(), "{}", cluster.output());
    }
    cluster.signal(Signal::SIGTERM);
    let status = cluster.wait_exit(STARTUP).expect("the primary stops");
    assert_eq!(status.code(), Some(0), "{}", cluster.output());
    let output = cluster.output();
    assert!(output.contains("cluster stopped clean=true"), "{output}");
    by_id
}

#[test]
fn an_unmodified_node_app_runs_as_workers_in_reuseport_mode() {
    serves_unmodified("reuseport");
}

#[test]
fn an_unmodified_node_app_runs_as_workers_in_shared_mode() {
    serves_unmodified("shared");
}

/// In steer mode the kernel's BPF program spreads an unmodified Node app's connections
/// round-robin over the workers (20 each of 40), where BPF can be loaded.
#[test]
fn steer_mode_spreads_an_unmodified_node_app_evenly() {
    let by_id = serves_unmodified("steer");
    let counts: Vec<usize> = by_id.values().copied().collect();
    if counts.iter().all(|&n| (19..=21).contains(&n)) {
        return;
    }
    // Where BPF is refused steer mode falls back to reuseport (the kernel's hash): still both.
    assert!(counts.iter().all(|&n| n > 0), "{by_id:?}");
}

/// A port someone else holds: the app's server gets Node's own `EADDRINUSE` from `bind` on its
/// `'error'` event, and the primary carries on.
#[test]
fn a_bind_error_reaches_the_app_as_nodes() {
    let dir = TempDir::new("node-ipc-inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut cluster = node_cluster("shared", port, &dir);
    let said = cluster.stderr.wait_for(STARTUP, |l| {
        l.contains("message from worker") && l.contains("\"listenError\":\"EADDRINUSE\"")
    });
    assert!(said.is_some(), "{}", cluster.output());
    assert!(
        cluster.output().contains("\"syscall\":\"bind\""),
        "{}",
        cluster.output()
    );
    cluster.stop_cleanly();
}

/// A worker killed by a signal is replaced, and its replacement gets the port again.
#[test]
fn a_killed_node_worker_is_replaced_and_serves_again() {
    let dir = TempDir::new("node-ipc-kill");
    let port = free_port();
    let mut cluster = node_cluster("reuseport", port, &dir);
    let bodies = answers_from_workers(port, 2, STARTUP);
    let victim: u32 = field(&bodies[0], "pid").unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    // Answers from a pid that is neither the victim nor... any two live workers again.
    let fresh = until(STARTUP, || {
        let body = http_get(port).ok()?.body;
        let pid: u32 = field(&body, "pid")?.parse().ok()?;
        (pid != victim
            && !bodies
                .iter()
                .any(|b| field(b, "pid") == Some(&pid.to_string())))
        .then_some(pid)
    });
    assert!(
        fresh.is_some(),
        "no replacement answered: {}",
        cluster.output()
    );
    cluster.stop_cleanly();
}

/// A server that already does `listen({fd: 3})` (forkline's socket, before Node's channel
/// existed) keeps working with it: fd 3 is still the `--listen` socket.
#[test]
fn listen_on_fd_3_still_gets_forklines_socket() {
    let dir = TempDir::new("node-ipc-fd3");
    let port = free_port();
    let address = format!("127.0.0.1:{port}");
    let flags = ["--mode", "shared", "--ipc", "node", "-l", &address];
    let mut cluster = start_node(&dir, NODE_SERVER, &flags, &[]);
    answers_from_workers(port, 2, STARTUP);
    cluster.stop_cleanly();
}

/// Without `--ipc`, a program named `node` gets Node's channel in a mode where workers accept,
/// and the log says so once.
#[test]
fn a_node_program_gets_the_channel_by_default() {
    let dir = TempDir::new("node-ipc-auto");
    let port = free_port();
    let flags = ["--mode", "reuseport"];
    let mut cluster = start_node(&dir, NODE_APP, &flags, &[port.to_string()]);
    answers_from_workers(port, 2, STARTUP);
    let said: Vec<String> = cluster
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.contains("workers get Node's cluster channel"))
        .collect();
    assert_eq!(said.len(), 1, "{}", cluster.output());
    cluster.stop_cleanly();
}

/// `forkline send` reaches the workers' `process.on('message')`, one slot or all of them; their
/// answers come back as messages in the primary's log.
#[test]
fn forkline_send_reaches_node_workers_and_they_answer() {
    let dir = TempDir::new("node-ipc-send");
    let port = free_port();
    let mut cluster = node_cluster("reuseport", port, &dir);
    answers_from_workers(port, 2, STARTUP);
    let control = dir.path().join("control.sock");
    let send = |to: &str, json: &str| {
        let mut command = forkline();
        command
            .arg("send")
            .arg("--control")
            .arg(&control)
            .args([to, json]);
        run_to_end(command, STARTUP)
    };
    let one = send("1", r#"{"n":1}"#);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    assert!(one.stdout.contains("sent to 1 worker"), "{}", one.stdout);
    let echoed = |body: &str| {
        let body = body.to_string();
        move |l: &str| l.contains("message from worker") && l.contains(&body)
    };
    let said = cluster
        .stderr
        .wait_for(STARTUP, echoed(r#"{"echo":{"n":1},"from":1}"#));
    assert!(said.is_some(), "{}", cluster.output());
    let all = send("all", r#""hi""#);
    assert!(
        all.stdout.contains("sent to 2 workers"),
        "{} {}",
        all.stdout,
        all.stderr
    );
    for slot in 0..2 {
        let body = format!(r#"{{"echo":"hi","from":{slot}}}"#);
        let said = cluster.stderr.wait_for(STARTUP, echoed(&body));
        assert!(said.is_some(), "{}", cluster.output());
    }
    let bad = send("all", "{not json");
    assert_eq!(bad.code, Some(2), "{}", bad.stderr);
    let nobody = send("7", "1");
    assert_eq!(nobody.code, Some(1), "{}", nobody.stderr);
    assert!(
        nobody.stderr.contains("no worker in slot 7"),
        "{}",
        nobody.stderr
    );
    cluster.stop_cleanly();
}

/// Proxy mode relays to each worker's own `$PORT`, which a Node worker binds itself: Node's
/// channel is refused there, in one line naming the flag.
#[test]
fn node_ipc_in_proxy_mode_is_refused_in_one_line() {
    let mut command = forkline();
    command.args([
        "run",
        "--mode",
        "proxy",
        "-l",
        "127.0.0.1:1",
        "--ipc",
        "node",
        "--",
        "node",
        "x.js",
    ]);
    let finished = run_to_end(command, STARTUP);
    assert_eq!(finished.code, Some(2), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("--ipc node"),
        "{}",
        finished.stderr
    );
    assert_eq!(
        finished.stderr.trim().lines().count(),
        1,
        "{}",
        finished.stderr
    );
}
