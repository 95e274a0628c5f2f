//! Log formats: `--log-format json` makes every line, the primary's and the workers', one JSON
//! object; `--log-level` filters the primary's; redirected output carries no colour codes.
//!
//! The primary's own log never takes it down. With nobody reading its stdout and stderr any
//! more (`forkline run ... 2>&1 | head -1`, a log collector that died), every write fails with
//! EPIPE: the primary must ignore that, keep restarting workers, and still stop cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const DEADLINE: Duration = Duration::from_secs(30);

/// Reads the first line of stderr, closes both pipes' read ends, then makes the primary log a
/// lot (a worker killed five times: "worker died", restarts). Each kill must still be followed
/// by a replacement, and SIGTERM must still stop the primary with exit code 0.
#[test]
fn closed_stdout_and_stderr_do_not_stop_supervision() {
    // Its control socket in a directory removed at the end (not spawned by `Running`).
    let runtime_dir = TempDir::new("quiet");
    let mut command = forkline();
    command.env("XDG_RUNTIME_DIR", runtime_dir.path());
    command.args(["run", "-w", "2", "--min-uptime", "0", "--name", "quiet"]);
    command.args(["--", "sh", "-c", "echo started; exec sleep 3600"]);
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("start forkline");
    // Killed by pid (with its workers, by PR_SET_PDEATHSIG) whatever happens below.
    let primary = KillOnDrop(child.id());
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, first_line) = mpsc::channel();
    std::thread::spawn(move || {
        let line = {
            let mut reader = BufReader::new(stderr);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            line
        }; // the reader, and with it the read end of stderr, is closed here
        let _ = tx.send(line);
    });
    let first = first_line
        .recv_timeout(DEADLINE)
        .expect("the primary wrote nothing on stderr");
    assert!(!first.is_empty(), "stderr closed before the first line");
    drop(stdout);

    let mut workers = until(DEADLINE, || {
        let now = children_of(primary.0);
        (now.len() == 2).then_some(now)
    })
    .expect("two workers did not start");
    for round in 0..5 {
        let victim = *workers.iter().next().unwrap();
        kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
        let replaced = until(DEADLINE, || {
            let now = children_of(primary.0);
            (now.len() == 2 && !now.contains(&victim)).then_some(now)
        });
        let status = child.try_wait().unwrap();
        workers = replaced.unwrap_or_else(|| {
            panic!(
                "round {round}: worker {victim} was not replaced (primary: {status:?}, \
                 children: {:?})",
                children_of(primary.0)
            )
        });
    }

    kill(Pid::from_raw(primary.0 as i32), Signal::SIGTERM).unwrap();
    let status = until(DEADLINE, || child.try_wait().unwrap())
        .expect("the primary ignored SIGTERM with its stderr closed");
    assert_eq!(status.code(), Some(0), "{status:?}");
    for pid in workers {
        assert!(!alive(pid), "worker {pid} outlived the primary");
    }
}

/// `forkline check-config ... | head -0`: a closed stdout loses the output, with no panic.
#[test]
fn check_config_on_a_closed_stdout_does_not_panic() {
    let dir = TempDir::new("closed-stdout");
    let path = dir.write("forkline.toml", "command = [\"true\"]\n");
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let mut command = forkline();
    command.arg("check-config").arg(&path);
    command
        .stdout(Stdio::from(write_end))
        .stderr(Stdio::piped());
    let output = command.output().expect("run check-config");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "{stderr}");
}

/// An error line to a closed stderr is lost, and the exit code is still the error's (2 for a
/// usage error, 1 for a runtime one), not a panic's 101.
#[test]
fn errors_on_a_closed_stderr_keep_their_exit_code() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let cases: [(&[&str], i32); 3] = [
        (&["run", "--bogus", "--", "true"], 2),
        (&["run", "--settle-time", "soon", "--", "true"], 2),
        (&["run", "-l", &address, "--", "true"], 1),
    ];
    for (args, code) in cases {
        let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
        drop(read_end);
        let mut command = forkline();
        command.args(args);
        command.stdout(Stdio::null()).stderr(Stdio::from(write_end));
        let status = command.status().expect("run forkline");
        assert_eq!(status.code(), Some(code), "forkline {args:?}");
    }
}

/// SIGKILLs a pid on drop, unless it is gone already.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// `--log-format json`: every line on stdout and stderr is a JSON object; worker lines carry
/// the message, slot, pid and stream; the primary's are tracing-subscriber's. No escape codes.
#[test]
fn json_log_format_for_primary_and_worker_lines() {
    let mut command = forkline();
    command.args(["run", "-w", "2", "--restart", "never", "--name", "js"]);
    command.args(["--log-format", "json"]);
    command.args([
        "--",
        "sh",
        "-c",
        "echo \"out $FORKLINE_WORKER_ID\"; echo err >&2",
    ]);
    let finished = run_to_end(command, DEADLINE);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let parse = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .map(|l| {
                assert!(!l.contains('\x1b'), "escape codes in {l:?}");
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .collect()
    };
    let out = parse(&finished.stdout);
    let mut slots: Vec<u64> = out
        .iter()
        .inspect(|o| {
            assert_eq!(o["stream"], "stdout");
            assert_eq!(o["name"], "js");
            assert!(o["pid"].as_u64().is_some_and(|p| p > 1), "{o}");
            assert!(
                o["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                "{o}"
            );
        })
        .map(|o| o["slot"].as_u64().unwrap())
        .collect();
    slots.sort();
    assert_eq!(slots, [0, 1], "{}", finished.stdout);
    assert!(out.iter().any(|o| o["fields"]["message"] == "out 0"));
    let err = parse(&finished.stderr);
    assert_eq!(
        err.iter().filter(|o| o["stream"] == "stderr").count(),
        2,
        "{}",
        finished.stderr
    );
    assert!(
        err.iter()
            .any(|o| o["fields"]["message"] == "forkline started" && o["level"] == "INFO"),
        "{}",
        finished.stderr
    );
}

/// `--log-level warn` drops the primary's info lines but keeps its warnings (a hint here) and
/// every worker line.
#[test]
fn log_level_filters_the_primarys_lines() {
    let mut command = forkline();
    command.args([
        "run",
        "-w",
        "1",
        "--restart",
        "never",
        "--log-level",
        "warn",
    ]);
    command.args(["--", "sh", "-c", "echo hello"]);
    let finished = run_to_end(command, DEADLINE);
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    assert!(!finished.stderr.contains("INFO"), "{}", finished.stderr);
    assert!(
        finished.stderr.contains("hint: no --listen"),
        "{}",
        finished.stderr
    );
    assert!(finished.stdout.contains("hello"), "{}", finished.stdout);
}
