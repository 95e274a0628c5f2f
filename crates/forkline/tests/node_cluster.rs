//! Node.js's own cluster tests, ported: one `#[test]` per Node file about worker events (`fork`,
//! `online`, `listening`, `disconnect`, `exit`, `message` and their order), `send` /
//! `disconnect` / `kill` on both sides, `isConnected` / `isDead` / `exitedAfterDisconnect`, and
//! servers closed and listened again. Each test runs one scenario of the fixture
//! `forkline-node-port` (`tests/bin/node_port.rs`, which says how Node maps onto forkline), with
//! a deadline, and expects exit 0 and a last line `ok`; on failure it prints the fixture's
//! output (its events, actions and workers' complaints, in order).
//!
//! Node's cluster test files (test/parallel unless noted) NOT ported, and why:
//! - Node-only machinery: accept-fail (patches the internal RoundRobinHandle),
//!   advanced-serialization (structured clone; forkline messages are JSON), child-index-dgram
//!   and child-index-net (internal handle indexes), dgram-1, dgram-2, dgram-bind-fd,
//!   dgram-ipv6only, dgram-reuse, dgram-reuseport (dgram internals), fork-stdio (extra stdio
//!   pipes to the worker), fork-windowsHide (Windows), ipc-throw and uncaught-exception
//!   (`uncaughtException` handlers; ipc-throw's listen error then disconnect is
//!   worker_disconnect_on_error), net-listen (libuv assert for `listen()` without a port),
//!   net-server-drop-connection (`server.maxConnections`), rr-domain-listen (domains),
//!   rr-handle-close, rr-handle-keep-loop-alive, rr-handle-ref-unref, rr-ref (ref/unref of
//!   handles and the event loop), worker-constructor (`new cluster.Worker()`),
//!   worker-handle-close (the internal `newconn` message), sequential/inspect-brk (inspector).
//! - Handles sent with messages (forkline messages carry no fds): net-send, send-deadlock,
//!   send-handle-twice, send-socket-to-worker-http-server,
//!   sequential/send-handle-large-payload.
//! - `cluster.settings` changed after start and the `setup` event (forkline's settings are fixed
//!   when the cluster starts): setup-primary-argv, setup-primary-cumulative,
//!   setup-primary-emit, setup-primary-multiple.
//! - Not about these behaviours: bind-privileged-port and shared-handle-bind-privileged-port
//!   (root-dependent ports), bind-twice (two separate clusters on one port), eaccess and
//!   http-pipe, listen-pipe-readable-writable, net-listen-relative-path (Unix socket paths and
//!   modes), net-listen-backlog, net-listen-ipv6only-false, net-reuseport,
//!   sequential/net-listen-ipv6only-none and -rr (listen options, IPv6), primary-error and
//!   primary-kill (workers die with their primary: tests/core.rs
//!   `sigkill_of_the_primary_leaves_no_worker_alive`).
//!
//! Partly ported (the rest has no forkline equivalent; each scenario's doc comment says what):
//! worker-events, worker-isdead, worker-forced-exit, basic, message, setup-primary, cwd.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// A scenario ends by itself within about 20 s; this leaves room for a slow, loaded machine.
const DEADLINE: Duration = Duration::from_secs(60);
/// After the fixture exited, how long its output may take to reach end-of-file.
const OUTPUT_GRACE: Duration = Duration::from_secs(5);

/// Runs scenario `name` of the fixture and asserts it passed.
fn run(name: &str) {
    run_with(name, &[]);
}

/// [`run`] with extra environment variables for the fixture's primary.
fn run_with(name: &str, env: &[(&str, &str)]) {
    // stdout and stderr of the fixture and of its workers share one pipe, so the output keeps
    // its order.
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
    let mut command = Command::new(env!("CARGO_BIN_EXE_forkline-node-port"));
    command
        .arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write.try_clone().expect("dup pipe")))
        .stderr(Stdio::from(write))
        // Its own process group, so that everything it started can be found and stopped.
        .process_group(0);
    for var in [
        "FORKLINE_WORKER_ID",
        "FORKLINE_IPC_FD",
        "FORKLINE_SCHED_POLICY",
        "FORKLINE_ACCEPT_COALESCE_US",
        "NODE_PORT_SCENARIO",
    ] {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start forkline-node-port");
    drop(command); // closes this process's copies of the pipe's write end
    let pid = child.id();

    let (line_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(std::fs::File::from(read)).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let (status_tx, status_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = status_tx.send(child.wait());
    });

    let mut output = Vec::new();
    let started = Instant::now();
    let status: Option<ExitStatus> = match status_rx.recv_timeout(DEADLINE) {
        Ok(status) => Some(status.expect("wait for forkline-node-port")),
        Err(_) => {
            // Overran: stop the fixture and everything it started while they still exist.
            kill_descendants(pid);
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
            let _ = status_rx.recv_timeout(Duration::from_secs(10));
            None
        }
    };
    if !collect(&lines, &mut output, OUTPUT_GRACE) {
        // Something it started still holds the pipe: it is in the fixture's process group,
        // which therefore still exists under that id.
        output.push(format!(
            "(processes of the fixture's group {pid} outlived it; killing them)"
        ));
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        collect(&lines, &mut output, OUTPUT_GRACE);
    }

    let passed =
        status.is_some_and(|s| s.success()) && output.last().map(String::as_str) == Some("ok");
    assert!(
        passed,
        "scenario {name}: {} after {:.1?}\n--- output ---\n{}\n--------------",
        match status {
            Some(status) => format!("fixture ended with {status}"),
            None => format!("fixture overran {DEADLINE:?} and was killed"),
        },
        started.elapsed(),
        output.join("\n")
    );
}

/// Moves lines into `output` until end-of-file (true) or until `grace` has passed (false).
fn collect(lines: &mpsc::Receiver<String>, output: &mut Vec<String>, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => output.push(line),
            Err(mpsc::RecvTimeoutError::Disconnected) => return true,
            Err(mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
}

/// SIGKILLs every descendant of `root`, by pid, found through `/proc`.
fn kill_descendants(root: u32) {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name: state, ppid, ...
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut family = vec![root];
    let mut i = 0;
    while i < family.len() {
        let parent = family[i];
        family.extend(
            parents
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    for pid in family.into_iter().skip(1) {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

// test/parallel/test-cluster-worker-events.js
#[test]
fn worker_events() {
    run("worker_events");
}

// test/parallel/test-cluster-worker-isconnected.js
#[test]
fn worker_isconnected() {
    run("worker_isconnected");
}

// test/parallel/test-cluster-worker-isdead.js
#[test]
fn worker_isdead() {
    run("worker_isdead");
}

// test/parallel/test-cluster-worker-exit.js
#[test]
fn worker_exit() {
    run("worker_exit");
}

// test/parallel/test-cluster-worker-death.js
#[test]
fn worker_death() {
    run("worker_death");
}

// test/parallel/test-cluster-worker-kill.js
#[test]
fn worker_kill() {
    run("worker_kill");
}

// test/parallel/test-cluster-worker-kill-signal.js
#[test]
fn worker_kill_signal() {
    run("worker_kill_signal");
}

// test/parallel/test-cluster-worker-disconnect.js
#[test]
fn worker_disconnect() {
    run("worker_disconnect");
}

// test/parallel/test-cluster-worker-destroy.js
#[test]
fn worker_destroy() {
    run("worker_destroy");
}

// test/parallel/test-cluster-worker-forced-exit.js
#[test]
fn worker_forced_exit() {
    run("worker_forced_exit");
}

// test/parallel/test-cluster-worker-init.js
#[test]
fn worker_init() {
    run("worker_init");
}

// test/parallel/test-cluster-worker-no-exit.js
#[test]
fn worker_no_exit() {
    run("worker_no_exit");
}

// test/parallel/test-cluster-worker-wait-server-close.js
#[test]
fn worker_wait_server_close() {
    run("worker_wait_server_close");
}

// test/parallel/test-cluster-worker-disconnect-on-error.js
#[test]
fn worker_disconnect_on_error() {
    run("worker_disconnect_on_error");
}

// test/parallel/test-cluster-basic.js
#[test]
fn basic() {
    run("basic");
}

// test/parallel/test-cluster-listening-port.js
#[test]
fn listening_port() {
    run("listening_port");
}

// test/parallel/test-cluster-message.js
#[test]
fn message() {
    run("message");
}

// test/parallel/test-cluster-invalid-message.js
#[test]
fn invalid_message() {
    run("invalid_message");
}

// test/parallel/test-cluster-fork-env.js
#[test]
fn fork_env() {
    run_with("fork_env", &[("cluster_test_overwrite", "old")]);
}

// test/parallel/test-cluster-setup-primary.js
#[test]
fn setup_primary() {
    run("setup_primary");
}

// test/parallel/test-cluster-cwd.js
#[test]
fn cwd() {
    run("cwd");
}

// test/parallel/test-cluster-disconnect.js
#[test]
fn disconnect() {
    run("disconnect");
}

// test/parallel/test-cluster-disconnect-before-exit.js
#[test]
fn disconnect_before_exit() {
    run("disconnect_before_exit");
}

// test/parallel/test-cluster-disconnect-idle-worker.js
#[test]
fn disconnect_idle_worker() {
    run("disconnect_idle_worker");
}

// test/parallel/test-cluster-disconnect-leak.js
#[test]
fn disconnect_leak() {
    run("disconnect_leak");
}

// test/parallel/test-cluster-disconnect-unshared-tcp.js
#[test]
fn disconnect_unshared_tcp() {
    run("disconnect_unshared_tcp");
}

// test/parallel/test-cluster-disconnect-unshared-udp.js
#[test]
fn disconnect_unshared_udp() {
    run("disconnect_unshared_udp");
}

// test/parallel/test-cluster-disconnect-race.js
#[test]
fn disconnect_race() {
    run("disconnect_race");
}

// test/parallel/test-cluster-disconnect-exitedAfterDisconnect-race.js
#[test]
fn disconnect_exited_after_disconnect_race() {
    run("disconnect_exited_after_disconnect_race");
}

// test/parallel/test-cluster-concurrent-disconnect.js
#[test]
fn concurrent_disconnect() {
    run("concurrent_disconnect");
}

// test/parallel/test-cluster-shared-leak.js
#[test]
fn shared_leak() {
    run("shared_leak");
}

// test/parallel/test-cluster-kill-disconnect.js
#[test]
fn kill_disconnect() {
    run("kill_disconnect");
}

// test/parallel/test-cluster-kill-infinite-loop.js
#[test]
fn kill_infinite_loop() {
    run("kill_infinite_loop");
}

// test/parallel/test-cluster-call-and-destroy.js
#[test]
fn call_and_destroy() {
    run("call_and_destroy");
}

// test/parallel/test-cluster-process-disconnect.js
#[test]
fn process_disconnect() {
    run("process_disconnect");
}

// test/parallel/test-cluster-server-restart-rr.js
#[test]
fn server_restart_rr() {
    run("server_restart_rr");
}

// test/parallel/test-cluster-server-restart-none.js
#[test]
fn server_restart_none() {
    run("server_restart_none");
}

// test/sequential/test-cluster-port-reuse-between-workers.js
#[test]
fn port_reuse_between_workers() {
    run("port_reuse_between_workers");
}

// test/parallel/test-cluster-eaddrinuse.js
#[test]
fn eaddrinuse() {
    run("eaddrinuse");
}

// test/parallel/test-cluster-shared-handle-bind-error.js
#[test]
fn shared_handle_bind_error() {
    run("shared_handle_bind_error");
}

/// Every scenario of the fixture has a test here, and every test names a real scenario.
#[test]
fn every_scenario_has_a_test() {
    let listed = Command::new(env!("CARGO_BIN_EXE_forkline-node-port"))
        .arg("--list")
        .env_remove("FORKLINE_WORKER_ID")
        .output()
        .expect("run forkline-node-port --list");
    assert!(listed.status.success(), "--list failed: {listed:?}");
    let source = include_str!("node_cluster.rs");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let mut names = Vec::new();
    for line in listed.lines() {
        let (name, node) = line.split_once(' ').expect("NAME NODE-FILE");
        names.push(name);
        let test = format!("// {node}\n#[test]\nfn {name}() {{\n    run");
        assert!(
            source.contains(&test),
            "scenario {name} ({node}) has no test with that comment here"
        );
    }
    let tests = source.matches("\n#[test]\nfn ").count() - 1; // this test
    assert_eq!(
        tests,
        names.len(),
        "tests here: {tests}; scenarios: {names:?}"
    );
}
