//! What the primary reads from `/proc`: a process's state, parent and CPU time, its resident
//! memory, and a worker's CPU use over a window.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// What the primary needs from `/proc/PID/stat`.
pub(crate) struct Stat {
    /// The state letter: `Z` zombie, `T` stopped, `t` stopped by a debugger, ...
    pub state: char,
    /// The parent's pid.
    pub ppid: u32,
    /// CPU time used in user and kernel mode (`utime` + `stime`), in clock ticks
    /// (`sysconf(_SC_CLK_TCK)` a second).
    pub cpu_ticks: u64,
}

/// Reads `/proc/PID/stat`; `None` if the process is gone (or the line unreadable).
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses, so start after the
    // last ')'.
    let rest = &line[line.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    // pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt, then utime and stime.
    let mut fields = fields.skip(9);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        cpu_ticks: utime + stime,
    })
}

/// Resident memory of `pid` in bytes, from `/proc/PID/statm`.
pub(crate) fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    Some(pages * page)
}

/// Clock ticks a second, the unit of `/proc/PID/stat`'s CPU times.
pub(crate) fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64
    })
}

/// Shorter than this since the last look, `cpu_percent` reaches back to the look before.
const CPU_WINDOW: Duration = Duration::from_secs(1);

/// The CPU time of a worker at two earlier looks, so that `cpu_percent` is taken over at least
/// `CPU_WINDOW` however often it is asked for (a scrape and `forkline top` at once).
#[derive(Debug, Default)]
pub(crate) struct CpuWindow {
    older: Option<(Instant, u64)>,
    newer: Option<(Instant, u64)>,
}

impl CpuWindow {
    /// Records `ticks` of CPU time at `now` and returns the CPU used, in percent of one CPU,
    /// since the last look at least `CPU_WINDOW` ago, or since `started` while there was none.
    pub(crate) fn sample(
        &mut self,
        now: Instant,
        ticks: u64,
        started: Instant,
        ticks_per_second: f64,
    ) -> Option<f64> {
        let base = match self.newer {
            Some(newer) if now.saturating_duration_since(newer.0) >= CPU_WINDOW => {
                self.older = Some(newer);
                self.newer = Some((now, ticks));
                newer
            }
            Some(_) => self.older.unwrap_or((started, 0)),
            None => {
                self.newer = Some((now, ticks));
                (started, 0)
            }
        };
        let secs = now.saturating_duration_since(base.0).as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let used = ticks.saturating_sub(base.1) as f64 / ticks_per_second;
        Some((used / secs * 1000.0).round() / 10.0)
    }
}

/// The kernel's count of OOM kills since boot (`oom_kill` in `/proc/vmstat`), where it is kept.
pub(crate) fn oom_kills() -> Option<u64> {
    std::fs::read_to_string("/proc/vmstat")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))?
        .trim()
        .parse()
        .ok()
}

/// The children of process `pid`, from every thread's `/proc/PID/task/TID/children` (a child
/// belongs to the thread that forked it); empty where the files are missing.
pub(crate) fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        // A thread that ended since the listing has no file any more: skipped.
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|child| child.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The sockets process `pid` holds: each fd's number and its socket's inode (`socket:[INODE]`).
pub(crate) fn socket_inodes(pid: u32) -> Vec<(std::os::fd::RawFd, u64)> {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let fd = entry.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(entry.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_percent_is_taken_over_at_least_a_window() {
        let started = Instant::now();
        let mut w = CpuWindow::default();
        let at = |ms| started + Duration::from_millis(ms);
        // First look, 2 s after the start with 1 s of CPU: 50 % since the start.
        assert_eq!(w.sample(at(2000), 100, started, 100.0), Some(50.0));
        // 100 ms later: too close, so since the start again (60 % of 2.1 s is 126 ticks).
        assert_eq!(w.sample(at(2100), 126, started, 100.0), Some(60.0));
        // 1 s after the first look: over that second (one full core).
        assert_eq!(w.sample(at(3000), 200, started, 100.0), Some(100.0));
        // Soon after: back to the look before (2 s → 3.5 s, 125 ticks in 1.5 s).
        assert_eq!(w.sample(at(3500), 225, started, 100.0), Some(83.3));
    }
}
