//! What `forkline run` sets on the sockets it binds, checked from the outside: names in
//! `LISTEN_FDNAMES` that libsystemd's `sd_listen_fds_with_names` accepts (`--listen NAME=ADDR`),
//! TCP_NODELAY on TCP listeners (`--tcp-nodelay`), the mode and owner of Unix socket files
//! (`--socket-mode`, `--socket-owner`), and how long a proxy client waits for a worker
//! (`--proxy-queue-timeout`).

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

const STARTUP: Duration = Duration::from_secs(30);

/// A worker linked with libsystemd: prints on one line what `sd_listen_fds_with_names` returns,
/// the names, and whether each fd is a listening stream socket; then waits for SIGTERM.
const SD_NAMES_PROGRAM: &str = r#"
#include <stdio.h>
#include <unistd.h>
#include <sys/socket.h>
#include <systemd/sd-daemon.h>

int main(void) {
    char **names = NULL;
    int n = sd_listen_fds_with_names(0, &names);
    printf("sd_listen_fds_with_names=%d names=", n);
    for (int i = 0; i < n && names; i++)
        printf("%s%s", i ? "," : "", names[i]);
    printf(" listening=");
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", sd_is_socket(SD_LISTEN_FDS_START + i, AF_UNSPEC, SOCK_STREAM, 1));
    printf("\n");
    fflush(stdout);
    pause();
    return 0;
}
"#;

/// Compiles `SD_NAMES_PROGRAM` in `dir` with `cc ... -lsystemd`. Fails with what is missing
/// (the compiler, libsystemd's header, the library) rather than skip.
fn compile_sd_names_program(dir: &TempDir) -> PathBuf {
    let source = dir.write("sd_names.c", SD_NAMES_PROGRAM);
    let binary = dir.path().join("sd_names");
    let output = Command::new("cc")
        .arg("-o")
        .arg(&binary)
        .arg(&source)
        .arg("-lsystemd")
        .current_dir(dir.path())
        .output();
    let output = match output {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            panic!("this test needs a C compiler: `cc` is not on PATH (apt-get install gcc)")
        }
        Err(e) => panic!("cannot run `cc`: {e}"),
    };
    let errors = String::from_utf8_lossy(&output.stderr);
    assert!(
        !errors.contains("sd-daemon.h"),
        "this test needs libsystemd's header <systemd/sd-daemon.h> (apt-get install \
         libsystemd-dev):\n{errors}"
    );
    assert!(
        !errors.contains("-lsystemd"),
        "this test needs libsystemd to link with (apt-get install libsystemd-dev):\n{errors}"
    );
    assert!(output.status.success(), "cc failed:\n{errors}");
    binary
}

/// Workers get `LISTEN_FDNAMES` that the real libsystemd accepts: the name given with
/// `--listen NAME=ADDR`, and for an unnamed TCP listener its address with `:` replaced by `_`
/// (a `:` would make `sd_listen_fds_with_names` return -EINVAL).
#[test]
fn listen_fd_names_are_accepted_by_libsystemd() {
    let dir = TempDir::new("sd-names");
    let program = compile_sd_names_program(&dir);
    let (named, unnamed) = (free_port(), free_port());
    let mut command = forkline();
    command.args(["run", "-w", "1", "--mode", "shared", "--name", "sd"]);
    command.arg("-l").arg(format!("web=127.0.0.1:{named}"));
    command.arg("-l").arg(format!("127.0.0.1:{unnamed}"));
    command.arg("--").arg(&program);
    let mut cluster = Running::spawn(command);
    let line = cluster
        .stdout
        .wait_for(STARTUP, |l| l.contains("sd_listen_fds_with_names="))
        .unwrap_or_else(|| panic!("the worker printed nothing\n{}", cluster.output()));
    assert_eq!(
        field(&line, "sd_listen_fds_with_names"),
        Some("2"),
        "libsystemd refused the names (-22 is -EINVAL): {line}"
    );
    assert_eq!(
        field(&line, "names"),
        Some(format!("web,127.0.0.1_{unnamed}").as_str()),
        "{line}"
    );
    assert_eq!(field(&line, "listening"), Some("1,1"), "{line}");
    cluster.stop_cleanly();
}

/// A worker on fd 3 that never sets TCP_NODELAY and writes each answer in two small pieces:
/// without TCP_NODELAY the second piece waits for the ACK of the first, which the client
/// delays (up to 40 ms on Linux) since it has nothing to send meanwhile.
const TWO_WRITES_WORKER: &str = r#"
import socket, threading

listener = socket.socket(fileno=3)

def serve(conn):
    with conn:
        for line in conn.makefile("rb"):
            conn.send(b"a")
            conn.send(b"b\n")

while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"#;

/// Round trips measured on one keep-alive connection (after a few unmeasured ones).
const ROUND_TRIPS: usize = 41;
const WARM_UP: usize = 5;

/// The median request/response round trip on one keep-alive connection to a cluster of the
/// two-writes worker, run with `extra` flags.
fn median_round_trip(extra: &[&str]) -> Duration {
    require("python3");
    let dir = TempDir::new("nodelay");
    let worker = dir.write("worker.py", TWO_WRITES_WORKER);
    let port = free_port();
    let mut command = forkline();
    command.env_remove("FORKLINE_TCP_NODELAY");
    command.args(["run", "-w", "1", "--mode", "shared"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command.args(extra).arg("--").arg("python3").arg(&worker);
    let mut cluster = Running::spawn(command);
    // The primary binds before it forks: once connected, the worker answers when it is up.
    let stream = until(STARTUP, || TcpStream::connect(("127.0.0.1", port)).ok())
        .unwrap_or_else(|| panic!("cannot connect\n{}", cluster.output()));
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    let mut round_trip = |timeout: Duration| {
        reader.get_ref().set_read_timeout(Some(timeout)).unwrap();
        let started = Instant::now();
        writer.write_all(b"ping\n").unwrap();
        let mut answer = String::new();
        reader.read_line(&mut answer).unwrap();
        assert_eq!(answer, "ab\n");
        started.elapsed()
    };
    round_trip(STARTUP); // the worker may still be starting
    for _ in 1..WARM_UP {
        round_trip(Duration::from_secs(10));
    }
    let mut times: Vec<Duration> = (0..ROUND_TRIPS)
        .map(|_| round_trip(Duration::from_secs(10)))
        .collect();
    times.sort();
    cluster.stop_cleanly();
    times[ROUND_TRIPS / 2]
}

/// TCP_NODELAY is on by default on the listeners forkline binds, and every accepted connection
/// inherits it: keep-alive round trips to a worker that never sets it stay short. With
/// `--tcp-nodelay false` the same worker takes ~40 ms a round trip (Nagle's algorithm waiting
/// for a delayed ACK), which shows the test measures what it claims to.
#[test]
fn tcp_nodelay_keeps_keep_alive_round_trips_short() {
    let with = median_round_trip(&[]);
    let without = median_round_trip(&["--tcp-nodelay", "false"]);
    eprintln!(
        "median keep-alive round trip: {with:?} with TCP_NODELAY (default), {without:?} without"
    );
    assert!(
        with < Duration::from_millis(20),
        "with TCP_NODELAY (the default) the median round trip is {with:?}"
    );
    assert!(
        without >= Duration::from_millis(30),
        "with --tcp-nodelay false the median round trip is {without:?}: Nagle's delay did not \
         show, so the first figure proves nothing"
    );
}

/// `--socket-mode` and `--socket-owner` set the permissions and the owner of a Unix socket
/// file forkline creates. As root the owner is `nobody` (and its primary group); otherwise the
/// user running the test, the only owner it may give.
#[test]
fn socket_mode_and_owner_apply_to_unix_socket_files() {
    let dir = TempDir::new("socket-mode");
    let path = dir.path().join("app.sock");
    let owner = if nix::unistd::Uid::effective().is_root() {
        nix::unistd::User::from_name("nobody")
            .unwrap()
            .expect("user nobody")
    } else {
        nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .unwrap()
            .expect("the test's own user")
    };
    let mut command = forkline();
    command.args(["run", "-w", "1", "--socket-mode", "0640"]);
    command.arg("--socket-owner").arg(&owner.name);
    command.arg("-l").arg(format!("unix:{}", path.display()));
    command.args(["--", "sleep", "3600"]);
    let mut cluster = Running::spawn(command);
    let listening = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("listening on"));
    assert!(listening.is_some(), "{}", cluster.output());
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640, "{:o}", meta.mode());
    assert_eq!(
        (meta.uid(), meta.gid()),
        (owner.uid.as_raw(), owner.gid.as_raw())
    );
    cluster.stop_cleanly();
}

/// In proxy mode, a client that connects while no worker is up waits at most
/// `--proxy-queue-timeout`, then is closed (the default, 5 s, would not fit the bound).
#[test]
fn proxy_queue_timeout_bounds_the_wait_for_a_worker() {
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "1", "--mode", "proxy"]);
    command.args(["--proxy-queue-timeout", "500ms"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    // A worker that never listens on its PORT: never up.
    command.args(["--", "sleep", "3600"]);
    let mut cluster = Running::spawn(command);
    let listening = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("listening on"));
    assert!(listening.is_some(), "{}", cluster.output());
    let started = Instant::now();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut buf = [0u8; 64];
    let read = client.read(&mut buf);
    let waited = started.elapsed();
    match read {
        Ok(0) => {}
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("expected the connection closed, got {other:?} after {waited:?}"),
    }
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_millis(4500),
        "closed after {waited:?}, with --proxy-queue-timeout 500ms"
    );
    cluster.stop_cleanly();
}
