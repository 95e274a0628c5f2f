//! Shared helpers for the integration tests: start the testbed primary, read its JSON events
//! with deadlines, send it commands, find free ports, and clean up every process by pid.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io::ErrorKind;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

mod free_port;
mod netns;
#[allow(unused_imports)] // not every test binary picks ports
pub use free_port::free_port;
#[allow(unused_imports)] // nor runs in a namespace of its own
pub use netns::in_private_netns;

/// Generous deadline for anything that should happen "soon" on a loaded 2-core CI machine.
pub const SOON: Duration = Duration::from_secs(15);

/// A running testbed primary.
pub struct Testbed {
    pub child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Every event seen so far, in order.
    pub seen: Vec<Value>,
    pids: HashSet<u32>,
}

impl Testbed {
    /// Starts the testbed primary with `env` settings.
    pub fn start(env: &[(&str, &str)]) -> Testbed {
        let mut command = Command::new(env!("CARGO_BIN_EXE_forkline-testbed"));
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("FORKLINE_WORKER_ID")
            .env_remove("FORKLINE_SCHED_POLICY");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("start testbed");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("testbed: {line}"),
                }
            }
        });
        Testbed {
            stdin: child.stdin.take(),
            child,
            events: rx,
            seen: Vec::new(),
            pids: HashSet::new(),
        }
    }

    /// The primary's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next event matching `pred`, failing the test after `timeout`.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        self.try_wait_for(timeout, pred)
            .unwrap_or_else(|| panic!("timed out waiting for {what}; seen: {:#?}", self.seen))
    }

    /// Like [`wait_for`], but returns `None` on timeout.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(event) => {
                    if let Some(pid) = event.get("pid").and_then(Value::as_u64) {
                        if pid > 0 {
                            self.pids.insert(pid as u32);
                        }
                    }
                    self.seen.push(event.clone());
                    if pred(&event) {
                        return Some(event);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    /// Waits for event `name` (optionally for worker `id`).
    pub fn wait_event(&mut self, name: &str, id: Option<u64>) -> Value {
        self.wait_for(&format!("{name} (id {id:?})"), SOON, |e| {
            e["event"] == name && id.is_none_or(|id| e["id"] == id)
        })
    }

    /// Waits until `n` distinct workers are online; returns their (id, pid) pairs.
    pub fn wait_online(&mut self, n: usize) -> Vec<(u64, u32)> {
        let mut online = Vec::new();
        while online.len() < n {
            let e = self.wait_event("online", None);
            online.push((e["id"].as_u64().unwrap(), e["pid"].as_u64().unwrap() as u32));
        }
        online.sort();
        online
    }

    /// Sends a command line on stdin.
    pub fn command(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("write command");
        stdin.flush().unwrap();
    }

    /// Sends `signal` to the primary.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), signal).unwrap();
    }

    /// Waits for the primary to exit; its exit code, or `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Every worker pid seen in events.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pids.iter().copied().collect()
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in &self.pids {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// What `/proc/PID/stat` says of a process: its state letter (`Z`: a zombie), parent and
/// process group.
pub struct ProcStat {
    pub state: String,
    pub ppid: u32,
    pub pgrp: u32,
}

/// `/proc/PID/stat` of `pid`, if it exists.
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the command name (which may hold spaces and parentheses): state, ppid, pgrp.
    let mut fields = stat.rsplit(')').next()?.split_whitespace();
    Some(ProcStat {
        state: fields.next()?.to_string(),
        ppid: fields.next()?.parse().ok()?,
        pgrp: fields.next()?.parse().ok()?,
    })
}

/// Every process on the machine with its `/proc/PID/stat`.
pub fn all_processes() -> Vec<(u32, ProcStat)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, proc_stat(pid)?)))
        .collect()
}

/// True while a process with `pid` exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    proc_stat(pid).is_some_and(|s| s.state != "Z")
}

/// Polls `cond` every 10 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Connects to `addr`, reads the reply to EOF with a deadline, and returns it.
pub fn fetch(addr: &str) -> std::io::Result<String> {
    use std::io::Read;
    let sockaddr: std::net::SocketAddr = addr.parse().unwrap();
    let mut stream = std::net::TcpStream::connect_timeout(&sockaddr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut out = String::new();
    stream.read_to_string(&mut out)?;
    Ok(out)
}

/// Reads the rest of a connection's reply to EOF (deadline [`SOON`]) and returns the id of the
/// worker that answered; panics on anything else.
pub fn worker_of(stream: &mut std::net::TcpStream) -> u64 {
    use std::io::Read;
    stream.set_read_timeout(Some(SOON)).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    answered_by(&reply).unwrap_or_else(|| panic!("not a worker reply: {reply:?}"))
}

/// Which worker answered: the `ID` of a `worker ID PID` reply.
pub fn answered_by(reply: &str) -> Option<u64> {
    reply.split_whitespace().nth(1)?.parse().ok()
}

/// Raises this process's soft limit on open files to its hard limit (children started later
/// inherit it), for tests that hold many connections at once. Returns the new limit.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    hard
}

/// Pids of the live (non-zombie) processes in process group `pgid`.
pub fn group_members(pgid: u32) -> Vec<u32> {
    all_processes()
        .into_iter()
        .filter(|(_, s)| s.pgrp == pgid && s.state != "Z")
        .map(|(pid, _)| pid)
        .collect()
}

/// The children of `pid` (zombies included), with their process group.
pub fn children_of(pid: u32) -> Vec<(u32, u32)> {
    all_processes()
        .into_iter()
        .filter(|(_, s)| s.ppid == pid)
        .map(|(child, s)| (child, s.pgrp))
        .collect()
}

/// SIGKILLs every process of group `pgid` (test cleanup). Never 0 or 1: those would name the
/// test's own group, or every process.
pub fn kill_group(pgid: u32) {
    if pgid <= 1 {
        return;
    }
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// SIGKILLs process `pid` (a worker a test crashes on purpose). Never 0 or 1, which would name
/// the test's own process group or init: a pid from an event or status is 0 until the
/// process exists.
pub fn kill_pid(pid: u64) {
    assert!(pid > 1, "refusing to kill pid {pid}");
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// True once every thread of `pid` is stopped (after SIGSTOP, the stop takes effect only when
/// each thread next runs: a thread woken by data in the meantime may read it first).
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            .and_then(|stat| {
                stat.rsplit_once(')')
                    .map(|(_, rest)| rest.trim_start().starts_with('T'))
            })
            .unwrap_or(false)
    })
}

// ---------------------------------------------------------------------------------------------
// A worker killed with connections queued on its own socket (reuseport and steer modes).

/// The pid of worker `id`, from its `listening` event.
pub fn listening_pid(tb: &Testbed, id: u64) -> u32 {
    let event = tb
        .seen
        .iter()
        .find(|e| e["event"] == "listening" && e["id"] == id)
        .unwrap_or_else(|| panic!("worker {id} has not listened"));
    event["pid"].as_u64().unwrap() as u32
}

/// The inodes of the sockets process `pid` has open.
pub fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let target = target.to_str()?;
            target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()
        })
        .collect()
}

/// The accept-queue length of process `pid`'s listening socket on 127.0.0.1:`port`
/// (`rx_queue` of a listener in `/proc/PID/net/tcp`, which shows `pid`'s namespace).
pub fn accept_queue_of(pid: u32, port: u16) -> Option<u64> {
    let inodes = socket_inodes(pid);
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).ok()?;
    let local = format!("0100007F:{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A");
        let inode: u64 = fields.get(9)?.parse().ok()?;
        if !listening || !inodes.contains(&inode) {
            return None;
        }
        u64::from_str_radix(fields.get(4)?.split(':').nth(1)?, 16).ok()
    })
}

/// The lines of `/proc/PID/net/tcp` (as `pid`'s namespace has it) for local port `port`, in
/// every state: for failure messages.
pub fn port_sockets(pid: u32, port: u16) -> String {
    let local = format!(":{port:04X} ");
    let show = |path: String| match std::fs::read_to_string(&path) {
        Ok(table) => format!(
            "{path}:\n{}",
            table
                .lines()
                .filter(|line| line.contains(&local))
                .collect::<Vec<_>>()
                .join("\n")
        ),
        Err(e) => format!("{path}: {e}"),
    };
    let netns = |path: String| std::fs::read_link(&path).map(|l| l.display().to_string());
    format!(
        "{}\n{}\nnetns of {pid}: {:?}, of this thread: {:?}",
        show(format!("/proc/{pid}/net/tcp")),
        show("/proc/thread-self/net/tcp".into()),
        netns(format!("/proc/{pid}/ns/net")),
        netns("/proc/thread-self/ns/net".into()),
    )
}

/// What became of the clients of [`kill_a_worker_with_a_queue`].
#[derive(Debug)]
pub struct Outcome {
    /// Connections queued on the killed worker's socket just before the kill.
    pub queued: u64,
    /// Replies by worker id, and by the pid that sent them.
    pub by_worker: BTreeMap<u64, usize>,
    pub by_pid: BTreeMap<u32, usize>,
    /// Connections reset.
    pub resets: usize,
}

/// Stops worker 0, connects `clients` clients, waits until those on worker 0's socket are all
/// that is left unanswered (at least one), SIGKILLs worker 0 and collects every reply.
pub fn kill_a_worker_with_a_queue(tb: &Testbed, port: u16, clients: usize) -> Outcome {
    use std::io::Read;
    let stopped = listening_pid(tb, 0);
    // `listening` is emitted once the primary has sent the socket: wait until the worker has
    // received it (stopped before, it would hold the socket only in its channel's queue).
    assert!(
        eventually(SOON, || accept_queue_of(stopped, port).is_some()),
        "worker 0 (pid {stopped}) never held its listening socket:\n{}",
        port_sockets(stopped, port)
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(stopped as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    assert!(
        eventually(SOON, || all_threads_stopped(stopped)),
        "worker 0 did not stop"
    );
    let answered = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..clients)
        .map(|_| {
            // Connected once the kernel completed the handshake, whether or not it is accepted.
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_read_timeout(Some(SOON)).unwrap();
            let answered = answered.clone();
            std::thread::spawn(move || {
                let mut reply = String::new();
                let result = stream.read_to_string(&mut reply).map(|_| reply);
                if result.is_ok() {
                    answered.fetch_add(1, Ordering::SeqCst);
                }
                result
            })
        })
        .collect();
    let mut queued = 0;
    let settled = eventually(SOON, || {
        queued = accept_queue_of(stopped, port).unwrap_or(0);
        queued > 0 && queued as usize + answered.load(Ordering::SeqCst) == clients
    });
    assert!(
        settled,
        "expected the unanswered clients queued on worker 0: {queued} queued, {} answered of \
         {clients}; worker 0 (pid {stopped}) has sockets {:?}; the port's sockets:\n{}",
        answered.load(Ordering::SeqCst),
        socket_inodes(stopped),
        port_sockets(stopped, port)
    );
    kill_pid(u64::from(stopped));
    let mut outcome = Outcome {
        queued,
        by_worker: BTreeMap::new(),
        by_pid: BTreeMap::new(),
        resets: 0,
    };
    for reader in readers {
        match reader.join().unwrap() {
            Ok(reply) => {
                let mut words = reply.split_whitespace().skip(1);
                let id: u64 = words.next().and_then(|w| w.parse().ok()).unwrap();
                let pid: u32 = words.next().and_then(|w| w.parse().ok()).unwrap();
                *outcome.by_worker.entry(id).or_default() += 1;
                *outcome.by_pid.entry(pid).or_default() += 1;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionReset => outcome.resets += 1,
            Err(e) => panic!("a client got neither a reply nor a reset: {e}"),
        }
    }
    eprintln!("{outcome:?}");
    outcome
}
