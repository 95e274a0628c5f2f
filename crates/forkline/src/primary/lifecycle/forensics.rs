//! Hang forensics: before the primary kills a worker for not answering (its watchdog went
//! silent, or it outlived the graceful timeout), what it was doing is kept — the kernel's view
//! (`/proc/PID/wchan`, `/proc/PID/stack` where readable) and the output of the `on_hang`
//! command (`py-spy dump --pid {pid}`, `kill -QUIT {pid}`, `gdb -batch ...`), bounded in time —
//! as lines of that worker's in the log and in `forkline logs`.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::primary::core::Core;
use crate::primary::handle::WorkerHandle;
use crate::primary::lifecycle::output_buffer::OutputStream;

/// How long the `on_hang` command may run before it is killed.
pub(crate) const ON_HANG_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of the command's output kept.
const MAX_OUTPUT: u64 = 256 * 1024;

/// Records what `worker` is doing before it is killed `why` (the kernel's view, then the
/// `on_hang` command's output), waiting at most [`ON_HANG_TIMEOUT`] for the command.
pub(crate) async fn before_kill(core: &Core, worker: &WorkerHandle, why: &str) {
    let pid = worker.pid();
    if pid == 0 || worker.is_dead() {
        return;
    }
    tracing::warn!(
        worker = worker.id(),
        pid,
        why,
        "worker hung; recording what it was doing before it is killed"
    );
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    if !wchan.trim().is_empty() {
        keep(core, worker, format!("[hang] wchan: {}", wchan.trim()));
    }
    if let Ok(stack) = std::fs::read_to_string(format!("/proc/{pid}/stack")) {
        for line in stack.lines().filter(|l| !l.trim().is_empty()) {
            keep(
                core,
                worker,
                format!("[hang] kernel stack: {}", line.trim()),
            );
        }
    }
    let Some(template) = &core.opts().on_hang else {
        return;
    };
    let command = fill(template, pid, worker.id());
    match run(&command, ON_HANG_TIMEOUT).await {
        Ok((output, finished)) => {
            for line in output.lines() {
                keep(core, worker, format!("[on-hang] {line}"));
            }
            if !finished {
                keep(
                    core,
                    worker,
                    format!("[on-hang] killed after {ON_HANG_TIMEOUT:?}: {command}"),
                );
            }
        }
        Err(e) => keep(
            core,
            worker,
            format!("[on-hang] could not run {command}: {e}"),
        ),
    }
}

/// `template` with `{pid}` and `{slot}` filled in.
fn fill(template: &str, pid: u32, slot: usize) -> String {
    template
        .replace("{pid}", &pid.to_string())
        .replace("{slot}", &slot.to_string())
}

/// Runs `command` with `sh -c` in a process group of its own, its stdout and stderr together;
/// what it wrote, and false when it had to be killed at `limit`.
async fn run(command: &str, limit: Duration) -> std::io::Result<(String, bool)> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("exec 2>&1; {command}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped").take(MAX_OUTPUT);
    let mut bytes = Vec::new();
    let finished = tokio::time::timeout(limit, async {
        let _ = out.read_to_end(&mut bytes).await;
        child.wait().await
    })
    .await
    .is_ok();
    if !finished {
        if let Some(pid) = pid {
            let _ = crate::sys::signal_group(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
    Ok((String::from_utf8_lossy(&bytes).into_owned(), finished))
}

/// One line of forensics: in the log, and as the worker's line in `forkline logs`.
fn keep(core: &Core, worker: &WorkerHandle, line: String) {
    tracing::warn!(worker = worker.id(), pid = worker.pid(), "{line}");
    core.output().push_for(worker, OutputStream::Stderr, line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_in_the_pid_and_the_slot() {
        assert_eq!(
            fill("py-spy dump --pid {pid} # slot {slot}", 42, 3),
            "py-spy dump --pid 42 # slot 3"
        );
    }

    #[tokio::test]
    async fn a_command_that_runs_too_long_is_cut_short() {
        let (out, finished) = run("echo one; echo two >&2", ON_HANG_TIMEOUT)
            .await
            .unwrap();
        assert!(finished);
        assert_eq!(out, "one\ntwo\n");
        let limit = Duration::from_millis(300);
        let (out, finished) = run("echo started; exec sleep 60", limit).await.unwrap();
        assert!(!finished);
        assert_eq!(out.trim(), "started");
    }
}
