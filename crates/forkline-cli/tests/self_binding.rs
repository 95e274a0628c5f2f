//! Programs that bind the `--listen` address themselves (`app.run(port=8000)`): under
//! `forkline run -w 2 -l 127.0.0.1:PORT` in shared, reuseport and steer modes each worker's own
//! `bind()` is trapped (seccomp) and answered with forkline's socket, so both workers serve
//! instead of the second failing with EADDRINUSE; binds of other addresses go on untouched; a
//! program started by a shell that does not `exec` is trapped too. Where traps are refused
//! (`FORKLINE_TEST_NO_SECCOMP=1`) or turned off (`--trap-bind=false`) the second worker gets
//! EADDRINUSE, and the refusal is said once, naming the fix. Real Python, 127.0.0.1 only.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);

/// An HTTP server that binds `127.0.0.1:PORT` (its argument) itself, as most apps do, and one
/// more socket of its own on an ephemeral port; it answers with its pid, slot and that port.
fn python_app() -> String {
    python_http_server(
        "other = socket.socket()\nother.bind((\"127.0.0.1\", 0))\nother_port = other.getsockname()[1]",
        r#"f"pid={os.getpid()} id={os.environ['FORKLINE_WORKER_ID']} other={other_port}\n""#,
        r#"server = Server(("127.0.0.1", int(sys.argv[1])), Handler)
print(f"serving pid={os.getpid()}", flush=True)
server.serve_forever()"#,
    )
}

/// `forkline run -w 2 --mode MODE -l 127.0.0.1:PORT FLAGS -- python3 app.py PORT` (through
/// `sh -c` without `exec` when `shell`).
fn start(dir: &TempDir, mode: &str, port: u16, flags: &[&str], shell: bool) -> Running {
    require("python3");
    let app = dir.write("app.py", &python_app());
    let control = dir.path().join("control.sock");
    let mut command = forkline();
    command
        .args(["run", "-w", "2", "--mode", mode])
        .args(["-l", &format!("127.0.0.1:{port}")])
        .arg("--control")
        .arg(&control)
        .args(flags)
        .arg("--");
    if shell {
        // `; true` keeps the shell from exec'ing python: python is the shell's child.
        command.args([
            "sh",
            "-c",
            &format!("python3 {} {port}; true", app.display()),
        ]);
    } else {
        command.arg("python3").arg(&app).arg(port.to_string());
    }
    Running::spawn(command)
}

/// `n` requests: the answers by slot, and every `other=` port seen.
fn answers(port: u16, n: usize) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut by_slot = BTreeMap::new();
    let mut others = Vec::new();
    for _ in 0..n {
        let body = http_get(port).expect("an answer").body;
        *by_slot
            .entry(field(&body, "id").unwrap_or("?").to_string())
            .or_insert(0) += 1;
        others.push(field(&body, "other").unwrap_or("?").to_string());
    }
    (by_slot, others)
}

/// Both workers bind the port and serve on forkline's socket; their other sockets are their own
/// (two different ephemeral ports, neither forkline's); each bind is logged as joined.
fn both_serve(mode: &str, shell: bool) {
    let dir = TempDir::new(&format!("self-bind-{mode}"));
    let port = free_port();
    let mut cluster = start(&dir, mode, port, &[], shell);
    let bodies = answers_from_workers(port, 2, STARTUP);
    let others: std::collections::BTreeSet<&str> =
        bodies.iter().filter_map(|b| field(b, "other")).collect();
    assert!(others.len() >= 2, "{bodies:?}");
    assert!(!others.contains(port.to_string().as_str()), "{bodies:?}");
    let joined = cluster
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.contains("the worker's own bind joins forkline's socket"))
        .count();
    assert_eq!(joined, 2, "{}", cluster.output());
    let (by_slot, _) = answers(port, 20);
    assert_eq!(by_slot.len(), 2, "{by_slot:?}");
    cluster.stop_cleanly();
}

#[test]
fn a_program_binding_the_listen_address_runs_as_two_workers_in_shared_mode() {
    both_serve("shared", false);
}

#[test]
fn a_program_binding_the_listen_address_runs_as_two_workers_in_reuseport_mode() {
    both_serve("reuseport", false);
}

/// A shell that starts the program (rather than exec'ing it): the filter is inherited.
#[test]
fn a_program_started_by_a_shell_is_trapped_too() {
    both_serve("shared", true);
}

/// In steer mode each worker's bind gets its slot's own socket in the steered group: the kernel
/// hands connections out strictly in turn (20 each of 40: CV 0), where BPF can be loaded.
#[test]
fn self_binding_workers_are_steered_evenly() {
    let dir = TempDir::new("self-bind-steer");
    let port = free_port();
    let mut cluster = start(&dir, "steer", port, &[], false);
    answers_from_workers(port, 2, STARTUP);
    let mut command = forkline();
    command
        .args(["status", "--json", "--control"])
        .arg(dir.path().join("control.sock"));
    let status: Value = serde_json::from_str(&run_to_end(command, STARTUP).stdout).unwrap();
    let (by_slot, _) = answers(port, 40);
    if status["steering"] != "bpf-round-robin" {
        eprintln!("skipped: no BPF here (steering {})", status["steering"]);
        assert_eq!(by_slot.len(), 2, "{by_slot:?}");
    } else {
        let counts: Vec<usize> = by_slot.values().copied().collect();
        assert!(
            counts.len() == 2 && counts.iter().all(|n| (19..=21).contains(n)),
            "{by_slot:?}"
        );
    }
    cluster.stop_cleanly();
}

/// Where binds cannot be trapped, one worker serves and the other dies on EADDRINUSE (and is
/// restarted); the log says once why, naming the fix.
fn untrapped(tag: &str, env: Option<(&str, &str)>, flags: &[&str], said: bool) {
    let dir = TempDir::new(tag);
    let port = free_port();
    require("python3");
    let mut cluster = {
        let app = dir.write("app.py", &python_app());
        let mut command = forkline();
        command
            .args(["run", "-w", "2", "--mode", "shared"])
            .args(["-l", &format!("127.0.0.1:{port}")])
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .args(flags)
            .arg("--")
            .arg("python3")
            .arg(&app)
            .arg(port.to_string());
        if let Some((key, value)) = env {
            command.env(key, value);
        }
        Running::spawn(command)
    };
    let in_use = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("Address already in use"));
    assert!(in_use.is_some(), "{}", cluster.output());
    let lines: Vec<String> = cluster
        .stderr
        .all()
        .into_iter()
        .filter(|l| l.contains("binds cannot be trapped here"))
        .collect();
    if said {
        assert_eq!(lines.len(), 1, "{}", cluster.output());
        assert!(lines[0].contains("fd 3"), "{}", lines[0]);
    } else {
        assert!(lines.is_empty(), "{}", cluster.output());
    }
    cluster.stop_cleanly();
}

#[test]
fn where_seccomp_is_refused_the_second_bind_fails_and_the_log_says_why() {
    untrapped(
        "self-bind-refused",
        Some(("FORKLINE_TEST_NO_SECCOMP", "1")),
        &[],
        true,
    );
}

#[test]
fn trap_bind_false_leaves_binds_alone() {
    untrapped("self-bind-off", None, &["--trap-bind=false"], false);
}
