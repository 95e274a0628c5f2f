//! Test helpers: start `forkline` (and the programs it runs) as real processes on 127.0.0.1,
//! collect their output line by line, wait on conditions with deadlines, and kill every process
//! started, by pid, whatever happens.

#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The name of the runtime directories [`forkline`] gives each command, removed when the
/// [`Running`] process that used one is dropped.
const RUN_DIR_PREFIX: &str = "forkline-cli-run-";

/// The `forkline` binary under test. Each command gets its own XDG_RUNTIME_DIR, so the
/// control sockets of clusters that tests run side by side (often with the same default name)
/// never clash; tests of the control commands set one shared by a cluster and its clients.
pub fn forkline() -> Command {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let runtime_dir = std::env::temp_dir().join(format!(
        "{RUN_DIR_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut command = Command::new(env!("CARGO_BIN_EXE_forkline"));
    command.env("RUST_LOG", "info");
    command.env("XDG_RUNTIME_DIR", runtime_dir);
    command.env_remove("FORKLINE_CONTROL");
    command
}

/// Polls `check` every 25 ms until it returns `Some` or `timeout` passes.
pub fn until<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A private directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new empty directory under the system temp dir.
    pub fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "forkline-cli-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `name` in the directory and returns its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("write test file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[path = "../../../forkline/tests/common/free_port.rs"]
mod free_port;
#[path = "../../../forkline/tests/common/netns.rs"]
mod netns;
#[allow(unused_imports)] // not every test binary picks ports
pub use free_port::free_port;
#[allow(unused_imports)] // nor runs in a namespace of its own
pub use netns::in_private_netns;
#[allow(dead_code)] // not every test asks these of a cluster
mod cluster;
#[allow(unused_imports)]
pub use cluster::{get_path, metrics_address, python_http_server, status_json};
#[allow(dead_code)] // only some tests put load on a cluster
mod load;
#[allow(unused_imports)]
pub use load::{get_ok, Load, Tally};
#[allow(dead_code)] // only the Node tests use it
mod node;
#[allow(unused_imports)] // only the Node tests run Node
pub use node::{system_program, test_deps, Node, SETUP};

#[derive(Default)]
struct Collected {
    lines: Vec<String>,
    closed: bool,
}

/// Lines of one output stream, shared with the thread that reads them.
#[derive(Clone, Default)]
pub struct Lines(Arc<(Mutex<Collected>, Condvar)>);

impl Lines {
    fn collect<R: Read + Send + 'static>(stream: R) -> Lines {
        let lines = Lines::default();
        let sink = lines.clone();
        std::thread::spawn(move || {
            let (collected, changed) = &*sink.0;
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                collected.lock().unwrap().lines.push(line);
                changed.notify_all();
            }
            collected.lock().unwrap().closed = true;
            changed.notify_all();
        });
        lines
    }

    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0 .0.lock().unwrap().lines.clone()
    }

    /// Waits until the stream reached its end (every writer closed it).
    pub fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait_until_collected(timeout, |c| c.closed.then_some(()))
            .is_some()
    }

    /// Everything so far, one string.
    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Waits until some line satisfies `matches`; returns it.
    pub fn wait_for(&self, timeout: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        self.wait_until(timeout, |lines| lines.iter().find(|l| matches(l)).cloned())
    }

    /// Waits until `check` over all lines so far returns `Some`.
    pub fn wait_until<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&[String]) -> Option<T>,
    ) -> Option<T> {
        self.wait_until_collected(timeout, |c| check(&c.lines))
    }

    fn wait_until_collected<T>(
        &self,
        timeout: Duration,
        check: impl Fn(&Collected) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let (collected, changed) = &*self.0;
        let mut guard = collected.lock().unwrap();
        loop {
            if let Some(found) = check(&guard) {
                return Some(found);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
    }
}

/// A running process with its output collected. Killed (by pid) when dropped.
pub struct Running {
    child: Child,
    /// The private XDG_RUNTIME_DIR [`forkline`] gave it, removed on drop.
    runtime_dir: Option<PathBuf>,
    /// Its stdout, line by line.
    pub stdout: Lines,
    /// Its stderr, line by line.
    pub stderr: Lines,
    status: Option<ExitStatus>,
}

impl Running {
    /// Starts `command` with piped stdout/stderr and no stdin.
    pub fn spawn(mut command: Command) -> Running {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let runtime_dir = command
            .get_envs()
            .find(|(key, _)| *key == "XDG_RUNTIME_DIR")
            .and_then(|(_, value)| value)
            .map(PathBuf::from)
            .filter(|dir| {
                dir.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(RUN_DIR_PREFIX))
            });
        let mut child = command.spawn().expect("start process");
        let stdout = Lines::collect(child.stdout.take().unwrap());
        let stderr = Lines::collect(child.stderr.take().unwrap());
        Running {
            child,
            runtime_dir,
            stdout,
            stderr,
            status: None,
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to it.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            let child = &mut self.child;
            self.status = until(timeout, || child.try_wait().ok().flatten());
        }
        self.status
    }

    /// SIGTERM, then waits up to `timeout` for a graceful exit.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.signal(Signal::SIGTERM);
        }
        self.wait_exit(timeout)
    }

    /// SIGTERM, then asserts the primary exits 0 within 20 s (a graceful stop).
    pub fn stop_cleanly(&mut self) {
        let status = self.stop(Duration::from_secs(20)).expect("graceful stop");
        assert_eq!(status.code(), Some(0), "{}", self.output());
    }

    /// Both streams, for assertion messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.status.is_none() && self.child.try_wait().ok().flatten().is_none() {
            // The primary's workers die with it (PR_SET_PDEATHSIG).
            self.signal(Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if let Some(dir) = &self.runtime_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The result of running a command to its end.
pub struct Finished {
    /// Exit code (`None` if killed by a signal).
    pub code: Option<i32>,
    /// Everything it wrote to stdout.
    pub stdout: String,
    /// Everything it wrote to stderr.
    pub stderr: String,
}

/// Runs `command` to its end (killed after `timeout`).
pub fn run_to_end(command: Command, timeout: Duration) -> Finished {
    let mut running = Running::spawn(command);
    let status = running.wait_exit(timeout);
    if status.is_none() {
        panic!(
            "command did not finish within {timeout:?}\n{}",
            running.output()
        );
    }
    // The readers see EOF once every process holding the pipes (workers too) has exited.
    running.stdout.wait_closed(Duration::from_secs(10));
    running.stderr.wait_closed(Duration::from_secs(10));
    Finished {
        code: status.and_then(|s| s.code()),
        stdout: running.stdout.text(),
        stderr: running.stderr.text(),
    }
}

/// A response from a test server: its status code and body.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The body.
    pub body: String,
}

/// `GET /` over HTTP/1.0 (the server closes after answering).
pub fn http_get(port: u16) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {text:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    Ok(Response {
        status,
        body: body.to_string(),
    })
}

/// Connects and reads until the server closes (for line servers that answer at once).
pub fn read_line_from(port: u16) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let _ = stream.shutdown(Shutdown::Write);
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// A worker output line without the timestamp the primary puts first (`2026-…Z `).
pub fn unstamped(line: &str) -> &str {
    match line.split_once(' ') {
        Some((time, rest)) if time.ends_with('Z') && time.as_bytes().get(10) == Some(&b'T') => rest,
        _ => line,
    }
}

/// `key=value` fields of a line like `pid=12 id=0 port=8080`.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
}

/// True while process `pid` exists (a zombie counts as gone once reaped).
pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

/// The running (not zombie) children of `pid`, from `/proc/PID/task/*/children` (every
/// thread's), the primary's keeper excluded.
pub fn children_of(pid: u32) -> std::collections::BTreeSet<u32> {
    let mut children = std::collections::BTreeSet::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        if let Ok(list) = std::fs::read_to_string(task.path().join("children")) {
            children.extend(
                list.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok())
                    .filter(|&child| !zombie(child))
                    .filter(|&child| !is_keeper(child)),
            );
        }
    }
    children
}

/// True when `pid` has exited but was not reaped yet (or does not exist).
pub fn zombie(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => true,
    }
}

/// A Node HTTP server that takes its socket from fd 3 when `LISTEN_FDS` is set (shared and
/// reuseport modes), else listens on `PORT` (proxy mode). It answers with who it is.
pub const NODE_SERVER: &str = r#"
const http = require('http');
const env = process.env;
const server = http.createServer((req, res) => {
  res.end(`pid=${process.pid} id=${env.FORKLINE_WORKER_ID} listen_pid=${env.LISTEN_PID} ` +
          `listen_fds=${env.LISTEN_FDS} names=${env.LISTEN_FDNAMES} port=${env.PORT}\n`);
});
if (env.LISTEN_FDS) server.listen({fd: 3}); else server.listen(Number(env.PORT), '127.0.0.1');
server.on('listening', () => console.log(`listening pid=${process.pid}`));
process.on('SIGTERM', () => server.close(() => process.exit(0)));
"#;

/// Checks that `program` can be run, with a clear message if it cannot.
pub fn require(program: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    assert!(found, "this test needs `{program}` on PATH");
}

/// Requests `GET /` until the answers came from `n` different worker pids; returns the bodies.
pub fn answers_from_workers(port: u16, n: usize, timeout: Duration) -> Vec<String> {
    let mut bodies = Vec::new();
    let mut pids = std::collections::BTreeSet::new();
    until(timeout, || {
        if let Ok(response) = http_get(port) {
            if response.status == 200 {
                if let Some(pid) = field(&response.body, "pid") {
                    pids.insert(pid.to_string());
                }
                bodies.push(response.body);
            }
        }
        (pids.len() >= n).then_some(())
    });
    assert!(
        pids.len() >= n,
        "expected answers from {n} workers, got pids {pids:?} in {} answers",
        bodies.len()
    );
    bodies
}

/// True for the primary's keeper process (`forkline-keeper`), which is a child of the primary
/// but not a worker.
fn is_keeper(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim() == "forkline-keeper")
}
