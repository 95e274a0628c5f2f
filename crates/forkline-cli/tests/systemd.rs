//! Systemd in and out: workers that speak sd_notify (readiness gates the primary's own
//! `READY=1`; the watchdog replaces a hung worker), the primary's `READY=1` / `STATUS=` /
//! `STOPPING=1` to its own `NOTIFY_SOCKET`, and socket activation with Debian's
//! `systemd-socket-activate`.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;

/// A program that prints who it is, waits `argv[1]` seconds, sends each further argument
/// (default `READY=1`) as one datagram to `NOTIFY_SOCKET`, then hangs.
const NOTIFY_PROGRAM: &str = r#"
import os, socket, sys, time
env = os.environ
print(f"started pid={os.getpid()} id={env['FORKLINE_WORKER_ID']} "
      f"notify={env.get('NOTIFY_SOCKET')} watchdog_usec={env.get('WATCHDOG_USEC')}", flush=True)
time.sleep(float(sys.argv[1]))
address = env["NOTIFY_SOCKET"]
if address.startswith("@"):
    address = "\0" + address[1:]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
for message in sys.argv[2:] or ["READY=1"]:
    sock.sendto(message.encode(), address)
print("notified", flush=True)
while True:
    time.sleep(3600)
"#;

/// Our stand-in for systemd's notify socket.
struct NotifyListener {
    socket: UnixDatagram,
    path: PathBuf,
    received: Vec<(Instant, String)>,
}

impl NotifyListener {
    fn new(dir: &TempDir) -> NotifyListener {
        let path = dir.path().join("systemd-notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifyListener {
            socket,
            path,
            received: Vec::new(),
        }
    }

    /// Receives until a datagram has a line equal to `line`; returns when it arrived.
    fn wait_for(&mut self, line: &str, timeout: Duration) -> Option<Instant> {
        self.wait_for_since(0, line, timeout)
    }

    /// Like [`wait_for`](Self::wait_for), among the datagrams from the `since`-th on.
    fn wait_for_since(&mut self, since: usize, line: &str, timeout: Duration) -> Option<Instant> {
        let seen = |received: &[(Instant, String)]| {
            received
                .iter()
                .skip(since)
                .find(|(_, m)| m.lines().any(|l| l == line))
                .map(|(at, _)| *at)
        };
        until(timeout, || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = self.socket.recv(&mut buf) {
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.received.push((Instant::now(), message));
            }
            seen(&self.received)
        })
    }

    /// How many datagrams arrived so far (for [`wait_for_since`](Self::wait_for_since)).
    fn count(&mut self) -> usize {
        let mut buf = [0u8; 4096];
        while let Ok(n) = self.socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            self.received.push((Instant::now(), message));
        }
        self.received.len()
    }

    fn messages(&self) -> Vec<String> {
        self.received.iter().map(|(_, m)| m.clone()).collect()
    }
}

/// Workers on `--ready notify` are ready only once they send `READY=1`; the primary reports
/// its own `READY=1` to systemd only when all of them did, keeps `STATUS=` up to date, and
/// sends `STOPPING=1` on SIGTERM. Workers get their own `NOTIFY_SOCKET`, not the primary's.
#[test]
fn sd_notify_readiness_gates_ready() {
    require("python3");
    let dir = TempDir::new("notify");
    let program = dir.write("notify.py", NOTIFY_PROGRAM);
    let mut systemd = NotifyListener::new(&dir);
    let delay = Duration::from_secs(2);
    let mut command = forkline();
    command.env("NOTIFY_SOCKET", &systemd.path);
    command.args([
        "run",
        "-w",
        "2",
        "--ready",
        "notify",
        "--ready-timeout",
        "30s",
    ]);
    command.args(["--name", "notify", "--", "python3"]);
    command.arg(&program).arg(delay.as_secs().to_string());
    let started = Instant::now();
    let mut cluster = Running::spawn(command);
    let ready_at = systemd.wait_for("READY=1", Duration::from_secs(30));
    let ready_at = ready_at.unwrap_or_else(|| {
        panic!(
            "no READY=1; got {:?}\n{}",
            systemd.messages(),
            cluster.output()
        )
    });
    assert!(
        ready_at.duration_since(started) >= delay,
        "READY=1 after {:?}, before the workers said READY=1",
        ready_at.duration_since(started)
    );
    assert!(
        systemd
            .wait_for("STATUS=2 of 2 workers ready", Duration::from_secs(5))
            .is_some(),
        "{:?}",
        systemd.messages()
    );
    let ours = systemd.path.display().to_string();
    let worker_lines: Vec<String> = cluster
        .stdout
        .all()
        .into_iter()
        .filter(|l| l.contains("started pid="))
        .collect();
    assert_eq!(worker_lines.len(), 2, "{}", cluster.output());
    for line in &worker_lines {
        let notify = field(line, "notify").unwrap();
        assert!(notify != "None" && notify != ours, "{line}");
    }
    cluster.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(
        systemd
            .wait_for("STOPPING=1", Duration::from_secs(10))
            .is_some(),
        "{:?}",
        systemd.messages()
    );
    let status = cluster.wait_exit(Duration::from_secs(20)).expect("stops");
    assert_eq!(status.code(), Some(0), "{}", cluster.output());
}

/// A worker program that runs until stopped, or, once the file `$MARKER` exists, exits 1 at
/// once: a deploy that broke.
const BREAKABLE_PROGRAM: &str = r#"#!/bin/sh
if [ -e "$MARKER" ]; then
    echo "broken pid=$$"
    exit 1
fi
echo "started pid=$$"
exec sleep 3600
"#;

/// SIGHUP to a cluster whose program now fails: slot 0's replacement exits with code 1, so the
/// reload fails. forkline logs it as a failed reload, tells systemd in `STATUS=`, and the old
/// workers keep running; the reload is framed by `RELOADING=1` and `READY=1`. Once the program
/// is fixed, the next SIGHUP reloads every slot and
/// the usual `STATUS=N of M workers ready` line comes back.
#[test]
fn failed_reload_is_logged_and_told_to_systemd() {
    let dir = TempDir::new("failed-reload");
    let marker = dir.path().join("broken");
    let program = dir.write("server.sh", BREAKABLE_PROGRAM);
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut systemd = NotifyListener::new(&dir);
    let mut command = forkline();
    command
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("MARKER", &marker);
    command
        .args(["run", "-w", "2", "--name", "flaky", "--"])
        .arg(&program);
    let mut cluster = Running::spawn(command);
    let started = |lines: &[String]| -> Vec<u32> {
        lines
            .iter()
            .filter(|l| l.contains("] started pid="))
            .filter_map(|l| field(l, "pid")?.parse().ok())
            .collect()
    };
    let old = cluster
        .stdout
        .wait_until(Duration::from_secs(30), |lines| {
            let pids = started(lines);
            (pids.len() == 2).then_some(pids)
        })
        .unwrap_or_else(|| panic!("two workers did not start\n{}", cluster.output()));
    assert!(
        systemd
            .wait_for("READY=1", Duration::from_secs(30))
            .is_some(),
        "{:?}",
        systemd.messages()
    );

    std::fs::write(&marker, "").unwrap();
    let before_hup = systemd.count();
    cluster.signal(nix::sys::signal::Signal::SIGHUP);
    let failure = "the new worker exited with code 1; the old worker keeps serving";
    let logged = cluster.stderr.wait_for(Duration::from_secs(30), |l| {
        l.contains("ERROR") && l.ends_with(&format!("reload failed: slot 0: {failure}"))
    });
    assert!(
        logged.is_some(),
        "no `reload failed` line\n{}",
        cluster.output()
    );
    let status = format!("STATUS=reload failed at slot 0: {failure}");
    assert!(
        systemd.wait_for(&status, Duration::from_secs(10)).is_some(),
        "no `{status}`: {:?}",
        systemd.messages()
    );
    // systemd's reload protocol: RELOADING=1 (with MONOTONIC_USEC=) when the reload starts,
    // READY=1 when it ends, failed or not (the service is up either way).
    assert!(
        systemd
            .wait_for_since(before_hup, "READY=1", Duration::from_secs(10))
            .is_some(),
        "no READY=1 after the reload: {:?}",
        systemd.messages()
    );
    let framed: Vec<String> = systemd.messages()[before_hup..].to_vec();
    let reloading = framed
        .iter()
        .position(|m| m.lines().any(|l| l == "RELOADING=1"))
        .unwrap_or_else(|| panic!("no RELOADING=1: {framed:?}"));
    assert!(framed[reloading].contains("MONOTONIC_USEC="), "{framed:?}");
    let ready = framed
        .iter()
        .rposition(|m| m.lines().any(|l| l == "READY=1"))
        .unwrap();
    assert!(reloading < ready, "{framed:?}");
    for pid in &old {
        assert!(
            alive(*pid),
            "old worker {pid} was stopped\n{}",
            cluster.output()
        );
    }

    std::fs::remove_file(&marker).unwrap();
    let since = systemd.count();
    cluster.signal(nix::sys::signal::Signal::SIGHUP);
    let replaced = until(Duration::from_secs(30), || {
        old.iter().all(|pid| !alive(*pid)).then_some(())
    });
    assert!(
        replaced.is_some(),
        "the fixed reload did not replace the old workers\n{}",
        cluster.output()
    );
    assert!(
        systemd
            .wait_for_since(
                since,
                "STATUS=2 of 2 workers ready",
                Duration::from_secs(10)
            )
            .is_some(),
        "the usual status did not come back: {:?}",
        systemd.messages()
    );
    cluster.stop_cleanly();
}

/// A worker that sent `WATCHDOG=1` once and then hangs is killed and replaced after
/// `--worker-timeout`; workers learn the interval from `WATCHDOG_USEC`.
#[test]
fn watchdog_replaces_a_hung_worker() {
    require("python3");
    let dir = TempDir::new("watchdog");
    let program = dir.write("notify.py", NOTIFY_PROGRAM);
    let mut command = forkline();
    command.args([
        "run",
        "-w",
        "1",
        "--ready",
        "notify",
        "--worker-timeout",
        "1s",
    ]);
    command.args(["--name", "hung", "--", "python3"]);
    command.arg(&program).args(["0", "READY=1\nWATCHDOG=1"]);
    let mut cluster = Running::spawn(command);
    let first = cluster
        .stdout
        .wait_for(Duration::from_secs(30), |l| l.contains("started pid="))
        .unwrap_or_else(|| panic!("{}", cluster.output()));
    assert_eq!(field(&first, "watchdog_usec"), Some("1000000"), "{first}");
    let first_pid = field(&first, "pid").unwrap().to_string();
    let replacement = cluster.stdout.wait_until(Duration::from_secs(30), |lines| {
        lines
            .iter()
            .filter_map(|l| field(l, "pid"))
            .find(|pid| *pid != first_pid)
            .map(str::to_string)
    });
    assert!(
        replacement.is_some(),
        "the hung worker was not replaced\n{}",
        cluster.output()
    );
    assert!(
        !alive(first_pid.parse().unwrap()),
        "the hung worker still runs"
    );
    cluster.stop_cleanly();
}

/// `systemd-socket-activate` binds the port and starts forkline with `LISTEN_FDS`: forkline
/// serves on that socket (it binds nothing of its own, not even its `--listen` address), the
/// workers get it as fd 3 with their own `LISTEN_PID`, and the primary reports `READY=1`.
#[test]
fn socket_activation_with_systemd_socket_activate() {
    require("systemd-socket-activate");
    require("node");
    let dir = TempDir::new("activation");
    let server = dir.write("server.js", NODE_SERVER);
    let mut systemd = NotifyListener::new(&dir);
    let port = free_port();
    let unused = free_port();
    let mut command = std::process::Command::new("systemd-socket-activate");
    command
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("RUST_LOG", "info");
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command.args([
        "--fdname=web",
        "-E",
        "PATH",
        "-E",
        "RUST_LOG",
        "-E",
        "NOTIFY_SOCKET",
    ]);
    command.arg(env!("CARGO_BIN_EXE_forkline"));
    command.args(["run", "-w", "2", "--mode", "shared", "-l"]);
    command.arg(format!("127.0.0.1:{unused}"));
    command.arg("--").arg("node").arg(&server);
    // systemd-socket-activate execs forkline on the first connection: same pid.
    let mut cluster = Running::spawn(command);
    let bodies = answers_from_workers(port, 2, Duration::from_secs(30));
    for body in &bodies {
        assert_eq!(field(body, "listen_pid"), field(body, "pid"), "{body}");
        assert_eq!(field(body, "listen_fds"), Some("1"), "{body}");
        // The name systemd gave the socket (`FileDescriptorName=`) reaches the workers.
        assert_eq!(field(body, "names"), Some("web"), "{body}");
        assert_eq!(
            field(body, "port"),
            Some(port.to_string().as_str()),
            "{body}"
        );
    }
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", unused)).is_err(),
        "forkline bound its --listen address despite socket activation"
    );
    assert!(
        systemd
            .wait_for("READY=1", Duration::from_secs(10))
            .is_some(),
        "{:?}\n{}",
        systemd.messages(),
        cluster.output()
    );
    cluster.stop_cleanly();
    assert!(
        systemd
            .wait_for("STOPPING=1", Duration::from_secs(5))
            .is_some(),
        "{:?}",
        systemd.messages()
    );
}

/// A server on the socket at fd 3 that answers `pid=PID`.
const FD3_SERVER: &str = r#"
import os, signal, socket, sys
signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(f"pid={os.getpid()}\n".encode())
    c.close()
"#;

/// Starts `argv` with `fd` at fd 3 and `LISTEN_FDS=1`, `LISTEN_FDNAMES=name` and its own
/// `LISTEN_PID`, as systemd does when it hands back what its fd store kept.
const FROM_THE_STORE: &str = r#"
import os, sys
fd, name, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
os.dup2(fd, 3)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES=name, LISTEN_PID=str(os.getpid()))
os.execv(argv[0], argv)
"#;

/// With an fd store (`FDSTORE` set, as `FileDescriptorStoreMax=` does), forkline puts the
/// socket it bound there (`FDSTORE=1`, `FDNAME=`). A restart that gets it back serves the same
/// port, and a client that connected while no forkline ran is answered: the port never closed.
#[test]
fn the_fd_store_keeps_the_socket_across_a_restart() {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    require("python3");
    let dir = TempDir::new("fdstore");
    let server = dir.write("server.py", FD3_SERVER);
    let shim = dir.write("from_store.py", FROM_THE_STORE);
    let systemd = NotifyListener::new(&dir);
    let port = free_port();
    let run_args = |command: &mut std::process::Command| {
        command.args(["run", "-w", "2", "--name", "stored"]);
        command.arg("-l").arg(format!("web=127.0.0.1:{port}"));
        command.arg("--").arg("python3").arg(&server);
    };
    let mut command = forkline();
    command
        .env("NOTIFY_SOCKET", &systemd.path)
        .env("FDSTORE", "16");
    run_args(&mut command);
    let mut first = Running::spawn(command);

    // The store message: its name and the listening socket itself.
    let stored = until(Duration::from_secs(30), || {
        let mut buf = [0u8; 4096];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let message = recvmsg::<UnixAddr>(
            systemd.socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .ok()?;
        let fds: Vec<i32> = message
            .cmsgs()
            .ok()?
            .filter_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => Some(fds),
                _ => None,
            })
            .flatten()
            .collect();
        let bytes = message.bytes;
        let text = String::from_utf8_lossy(&buf[..bytes]).into_owned();
        // Kept open (never closed) for the rest of the test: this is the store.
        text.starts_with("FDSTORE=1").then_some((text, fds))
    })
    .unwrap_or_else(|| panic!("no FDSTORE=1\n{}", first.output()));
    let (text, fds) = stored;
    assert_eq!(text, "FDSTORE=1\nFDNAME=web");
    assert_eq!(fds.len(), 1);
    // The stored fd is the socket listening on the port (its inode, in /proc/net/tcp).
    let inode = std::fs::read_link(format!("/proc/self/fd/{}", fds[0])).unwrap();
    let inode = inode.to_string_lossy();
    let inode = inode.trim_start_matches("socket:[").trim_end_matches(']');
    let tcp = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let listening = tcp.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields
            .get(1)
            .is_some_and(|local| local.ends_with(&format!(":{port:04X}")))
            && fields.get(3) == Some(&"0A")
            && fields.get(9) == Some(&inode)
    });
    assert!(
        listening,
        "fd {} ({inode}) is not the listener on {port}",
        fds[0]
    );
    assert!(read_line_from(port).unwrap().starts_with("pid="));

    // "systemctl restart": forkline stops; the store keeps the socket, so a client connecting
    // now is queued, not refused; the new forkline gets the socket back and answers it.
    first.stop_cleanly();
    let mut waiting =
        std::net::TcpStream::connect(("127.0.0.1", port)).expect("queued, not refused");
    let mut command = std::process::Command::new("python3");
    command.arg(&shim).arg(fds[0].to_string()).arg("web");
    command.arg(env!("CARGO_BIN_EXE_forkline"));
    run_args(&mut command);
    command.env("XDG_RUNTIME_DIR", dir.path());
    let mut second = Running::spawn(command);
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut answer = String::new();
    waiting.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("pid="),
        "{answer:?}\n{}",
        second.output()
    );
    assert!(
        second
            .stderr
            .text()
            .contains("socket activation: serving on the sockets"),
        "{}",
        second.output()
    );
    second.stop_cleanly();
}
