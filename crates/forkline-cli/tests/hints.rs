//! The hints `forkline run` gives where users go wrong, each against a real cluster: no
//! `--listen`, round-robin with a program not built on the library, shared mode piling
//! connections onto one worker, and a proxy-mode worker listening on every interface.

mod common;

use std::net::TcpStream;
use std::time::Duration;

use common::*;

const STARTUP: Duration = Duration::from_secs(30);

#[test]
fn no_listen_address_is_hinted() {
    let mut command = forkline();
    command.args([
        "run",
        "-w",
        "1",
        "--restart",
        "never",
        "--",
        "sh",
        "-c",
        "true",
    ]);
    let finished = run_to_end(command, STARTUP);
    assert!(
        finished.stderr.contains("hint: no --listen address"),
        "{}",
        finished.stderr
    );
}

#[test]
fn round_robin_with_a_plain_program_is_hinted_at_start() {
    let mut command = forkline();
    command.args([
        "run",
        "-w",
        "1",
        "--restart",
        "never",
        "--mode",
        "round-robin",
    ]);
    command.arg("-l").arg(format!("127.0.0.1:{}", free_port()));
    command.args(["--", "sh", "-c", "true"]);
    let finished = run_to_end(command, STARTUP);
    let hint = finished
        .stderr
        .lines()
        .find(|l| l.contains("hint: round-robin"))
        .unwrap_or_else(|| panic!("no hint\n{}", finished.stderr));
    assert!(hint.contains("/sh is not one"), "{hint}");
    assert!(!finished.stderr.contains("hint: no --listen"));
}

/// Worker 0 accepts and keeps every connection; worker 1 never accepts.
const HOARDER: &str = r#"
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(fileno=3)
held = []
if os.environ["FORKLINE_WORKER_ID"] == "0":
    while True:
        c, _ = s.accept()
        held.append(c)
while True:
    time.sleep(1)
"#;

#[test]
fn shared_mode_connections_piling_on_one_worker_are_hinted() {
    require("python3");
    let dir = TempDir::new("hint-shared");
    let program = dir.write("hoarder.py", HOARDER);
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "2", "--mode", "shared"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command.arg("--").arg("python3").arg(&program);
    let mut cluster = Running::spawn(command);
    let mut clients = Vec::new();
    let hint = until(STARTUP, || {
        if clients.len() < 12 {
            if let Ok(client) = TcpStream::connect(("127.0.0.1", port)) {
                clients.push(client);
            }
        }
        cluster
            .stderr
            .all()
            .into_iter()
            .find(|l| l.contains("hint: shared mode"))
    })
    .unwrap_or_else(|| panic!("no hint\n{}", cluster.output()));
    assert!(hint.contains("worker 0"), "{hint}");
    assert!(hint.contains("--mode reuseport"), "{hint}");
    drop(clients);
    cluster.stop_cleanly();
}

#[test]
fn a_proxy_worker_on_every_interface_is_hinted() {
    require("python3");
    let dir = TempDir::new("hint-proxy");
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "1", "--mode", "proxy", "--ready", "listen"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command.arg("--cwd").arg(dir.path());
    command.args(["--", "sh", "-c", r#"exec python3 -m http.server "$PORT""#]);
    let mut cluster = Running::spawn(command);
    let hint = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("hint: proxy mode"))
        .unwrap_or_else(|| panic!("no hint\n{}", cluster.output()));
    assert!(hint.contains("worker 0"), "{hint}");
    assert!(hint.contains("every interface"), "{hint}");
    cluster.stop_cleanly();
}
