//! Hang forensics (`--on-hang CMD`): before a worker is killed for not answering — its watchdog
//! went silent (here: it was SIGSTOPped), or it outlived the graceful timeout — the command runs
//! with the worker's pid and slot, and its output, with the worker's wchan, is in the log and in
//! `forkline logs`; then the worker is killed (and, for the watchdog, replaced, its exit reason
//! `watchdog`). Python and sh workers, a temp dir.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const STARTUP: Duration = Duration::from_secs(30);

/// A worker that says it is ready, then sends `WATCHDOG=1` every 100 ms, as long as it runs.
const PINGING: &str = r#"
import os, socket, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
path = os.environ["NOTIFY_SOCKET"]
sock.sendto(b"READY=1", path)
print(f"pinging pid={os.getpid()}", flush=True)
while True:
    sock.sendto(b"WATCHDOG=1", path)
    time.sleep(0.1)
"#;

/// What the `--on-hang` command prints: the pid and slot it was given, and the process state.
const ON_HANG: &str = "echo hung pid={pid} slot={slot}; grep State /proc/{pid}/status";

fn logs(dir: &TempDir) -> String {
    let mut command = forkline();
    command
        .arg("logs")
        .arg("--control")
        .arg(dir.path().join("control.sock"));
    run_to_end(command, STARTUP).stdout
}

/// A SIGSTOPped worker stops pinging: its watchdog fires, the on-hang command runs with its pid
/// (seeing it stopped) before it is killed, and a new worker takes the slot.
#[test]
fn a_stopped_workers_watchdog_runs_the_on_hang_command_before_the_kill() {
    require("python3");
    let dir = TempDir::new("hang-watchdog");
    let program = dir.write("pinging.py", PINGING);
    let mut command = forkline();
    command
        .args([
            "run",
            "-w",
            "1",
            "--ready",
            "notify",
            "--worker-timeout",
            "1s",
        ])
        .args(["--on-hang", ON_HANG])
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .arg("--")
        .arg("python3")
        .arg(&program);
    let mut cluster = Running::spawn(command);
    let first = cluster
        .stdout
        .wait_for(STARTUP, |l| l.contains("pinging pid="))
        .unwrap_or_else(|| panic!("{}", cluster.output()));
    let pid: i32 = field(&first, "pid").unwrap().parse().unwrap();
    // Pings for a while first: the watchdog is satisfied.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(alive(pid as u32), "{}", cluster.output());
    kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
    let said = format!("[on-hang] hung pid={pid} slot=0");
    let ran = cluster.stderr.wait_for(STARTUP, |l| l.contains(&said));
    assert!(ran.is_some(), "{}", cluster.output());
    assert!(
        cluster
            .stderr
            .wait_for(STARTUP, |l| l.contains("[on-hang] State:")
                && l.contains("stopped"))
            .is_some(),
        "{}",
        cluster.output()
    );
    let replaced = cluster.stdout.wait_until(STARTUP, |lines| {
        lines
            .iter()
            .filter_map(|l| field(l, "pid"))
            .find(|p| *p != pid.to_string())
            .map(str::to_string)
    });
    assert!(replaced.is_some(), "{}", cluster.output());
    assert!(!alive(pid as u32));
    let kept = logs(&dir);
    assert!(kept.contains(&said), "{kept}");
    let status = status_json(&dir.path().join("control.sock"));
    assert_eq!(
        status["workers"][0]["last_exit"]["reason"], "watchdog",
        "{status}"
    );
    cluster.stop_cleanly();
}

/// A worker that ignores SIGTERM outlives the graceful timeout of a stop: the on-hang command
/// runs with its pid before the SIGKILL.
#[test]
fn a_worker_past_the_graceful_timeout_runs_the_on_hang_command_before_the_kill() {
    let dir = TempDir::new("hang-graceful");
    let mut command = forkline();
    command
        .args(["run", "-w", "1", "--graceful-timeout", "1s"])
        .args(["--on-hang", ON_HANG])
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .args([
            "--",
            "sh",
            "-c",
            "trap '' TERM; echo stubborn pid=$$; while :; do sleep 0.1; done",
        ]);
    let mut cluster = Running::spawn(command);
    let first = cluster
        .stdout
        .wait_for(STARTUP, |l| l.contains("stubborn pid="))
        .unwrap_or_else(|| panic!("{}", cluster.output()));
    let pid = field(&first, "pid").unwrap().to_string();
    cluster.signal(Signal::SIGTERM);
    let status = cluster.wait_exit(STARTUP).expect("the primary stops");
    let output = cluster.output();
    assert!(
        output.contains(&format!("[on-hang] hung pid={pid} slot=0")),
        "{output}"
    );
    let ran = output.find("[on-hang] hung pid=").unwrap();
    let killed = output
        .find("graceful timeout reached; sending SIGKILL")
        .unwrap();
    assert!(ran < killed, "{output}");
    assert_ne!(status.code(), Some(0), "{output}");
}
