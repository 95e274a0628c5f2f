//! `--cpu-affinity`: the worker of slot i runs on the i-th CPU forkline may use (round-robin
//! over them), as the kernel reports it (`Cpus_allowed_list`), `forkline status --json` shows
//! it, and a restarted worker gets its slot's CPU again. `sh` workers.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const STARTUP: Duration = Duration::from_secs(30);

/// The CPUs process `pid` may run on, as `/proc/PID/status` lists them.
fn allowed(pid: i64) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

/// The CPUs this test may use, as listed for it.
fn own_cpus() -> Vec<usize> {
    let list = allowed(std::process::id() as i64);
    let mut cpus = Vec::new();
    for part in list.split(',') {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn two_workers_are_pinned_to_two_cpus_and_a_restart_keeps_its_slots() {
    let cpus = own_cpus();
    let dir = TempDir::new("cpu-affinity");
    let mut command = forkline();
    command
        .args(["run", "-w", "2", "--cpu-affinity"])
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .args(["--", "sh", "-c", "exec sleep 60"]);
    let mut cluster = Running::spawn(command);
    let status = || Some(status_json(&dir.path().join("control.sock")));
    let slots = until(STARTUP, || {
        let s = status()?;
        let workers = s["workers"].as_array()?.clone();
        workers
            .iter()
            .all(|w| w["pid"].as_i64().is_some())
            .then_some(workers)
    })
    .unwrap_or_else(|| panic!("{}", cluster.output()));
    for (slot, worker) in slots.iter().enumerate() {
        let cpu = cpus[slot % cpus.len()];
        assert_eq!(worker["cpu"], cpu, "{worker}");
        assert_eq!(allowed(worker["pid"].as_i64().unwrap()), cpu.to_string());
    }
    // Slot 1's worker killed: its restart runs on the same CPU.
    let old = slots[1]["pid"].as_i64().unwrap();
    kill(Pid::from_raw(old as i32), Signal::SIGKILL).unwrap();
    let restarted = until(STARTUP, || {
        let pid = status()?["workers"][1]["pid"].as_i64()?;
        (pid != old).then_some(pid)
    })
    .unwrap_or_else(|| panic!("{}", cluster.output()));
    assert_eq!(allowed(restarted), cpus[1 % cpus.len()].to_string());
    cluster.stop_cleanly();
}
