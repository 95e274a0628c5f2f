//! Every worker exit carries one reason: what the primary stopped it for (reload, scale, ...)
//! or what it died of (crash with its code, signal). It shows as the slot's `last_exit` in
//! `forkline status --json`, in `forkline_worker_exits_total{reason}` on `/metrics`, and in the
//! log line of the exit. Plain `sh` workers, a metrics port on 127.0.0.1.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);

/// A cluster of `workers` `sh` workers running `script`, with its control socket and metrics.
struct Cluster {
    running: Running,
    dir: TempDir,
    metrics: String,
}

impl Cluster {
    fn start(tag: &str, workers: usize, script: &str) -> Cluster {
        let dir = TempDir::new(tag);
        let mut command = forkline();
        command
            .args([
                "run",
                "-w",
                &workers.to_string(),
                "--metrics",
                "127.0.0.1:0",
            ])
            .args(["--min-uptime", "100ms", "--settle-time", "200ms"])
            .arg("--control")
            .arg(dir.path().join("control.sock"))
            .args(["--", "sh", "-c", script]);
        let running = Running::spawn(command);
        let metrics = metrics_address(&running);
        Cluster {
            running,
            dir,
            metrics,
        }
    }

    fn control(&self, args: &[&str]) -> Finished {
        let mut command = forkline();
        command
            .arg(args[0])
            .arg("--control")
            .arg(self.dir.path().join("control.sock"))
            .args(&args[1..]);
        run_to_end(command, STARTUP)
    }

    /// The slots of `forkline status --json`.
    fn slots(&self) -> Vec<Value> {
        let status = status_json(&self.dir.path().join("control.sock"));
        status["workers"].as_array().cloned().unwrap_or_default()
    }

    /// `forkline_worker_exits_total{reason="REASON"}` now.
    fn exits(&self, reason: &str) -> u64 {
        let text = get_path(&self.metrics, "/metrics")
            .map(|(_, text)| text)
            .unwrap_or_default();
        let line = format!("forkline_worker_exits_total{{reason=\"{reason}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A worker that exits with code 3 is a `crash` with its code; one killed by a signal the
/// primary did not send is a `signal` with its number.
#[test]
fn crashes_and_signals_are_told_apart() {
    let mut cluster = Cluster::start("exit-crash", 1, "sleep 0.3; exit 3");
    let crashed = until(STARTUP, || {
        let slot = cluster.slots().first()?.clone();
        (slot["last_exit"]["reason"] == "crash").then_some(slot)
    })
    .unwrap_or_else(|| panic!("no crash seen\n{}", cluster.running.output()));
    assert_eq!(crashed["last_exit"]["code"], 3, "{crashed}");
    assert!(cluster.exits("crash") >= 1);
    let logged = cluster.running.stderr.wait_for(STARTUP, |l| {
        l.contains("worker died") && l.contains("reason=\"crash\"")
    });
    assert!(logged.is_some(), "{}", cluster.running.output());
    cluster.running.stop_cleanly();

    let mut cluster = Cluster::start("exit-signal", 1, "exec sleep 60");
    let pid = until(STARTUP, || cluster.slots().first()?["pid"].as_i64()).expect("a worker pid");
    kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
    let signalled = until(STARTUP, || {
        let slot = cluster.slots().first()?.clone();
        (slot["last_exit"]["reason"] == "signal").then_some(slot)
    })
    .unwrap_or_else(|| panic!("no signal seen\n{}", cluster.running.output()));
    assert_eq!(signalled["last_exit"]["signal"], 15, "{signalled}");
    assert_eq!(signalled["last_exit"]["pid"], pid, "{signalled}");
    assert_eq!(cluster.exits("signal"), 1);
    cluster.running.stop_cleanly();
}

/// The workers a reload replaced exit as `reload`, and the one a scale-down stopped as `scale`;
/// neither counts as a crash.
#[test]
fn reloads_and_scale_downs_say_so() {
    let mut cluster = Cluster::start("exit-reload", 2, "exec sleep 60");
    until(STARTUP, || (cluster.slots().len() == 2).then_some(()));
    let reloaded = cluster.control(&["reload"]);
    assert_eq!(reloaded.code, Some(0), "{}", reloaded.stderr);
    let both = until(STARTUP, || {
        let slots = cluster.slots();
        (slots.len() == 2 && slots.iter().all(|s| s["last_exit"]["reason"] == "reload"))
            .then_some(())
    });
    assert!(
        both.is_some(),
        "{:?}\n{}",
        cluster.slots(),
        cluster.running.output()
    );
    assert_eq!(cluster.exits("reload"), 2);
    let scaled = cluster.control(&["scale", "1"]);
    assert_eq!(scaled.code, Some(0), "{}", scaled.stderr);
    let counted = until(STARTUP, || (cluster.exits("scale") == 1).then_some(()));
    assert!(counted.is_some(), "{}", cluster.running.output());
    assert_eq!(cluster.exits("crash") + cluster.exits("signal"), 0);
    cluster.running.stop_cleanly();
}
