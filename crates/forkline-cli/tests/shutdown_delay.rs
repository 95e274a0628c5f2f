//! Lame-duck shutdown (`--shutdown-delay`): on SIGTERM `/readyz` answers 503 at once while the
//! workers keep serving every request for the delay, then the graceful stop runs and the cluster
//! exits 0; a second SIGTERM ends the delay early. Python workers on fd 3, 127.0.0.1 only.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const STARTUP: Duration = Duration::from_secs(30);

/// An HTTP server on the socket forkline passed as fd 3.
fn python_server() -> String {
    python_http_server(
        "",
        r#"f"pid={os.getpid()}\n""#,
        r#"server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.serve_forever()"#,
    )
}

/// A cluster with `--shutdown-delay DELAY`, its port and its metrics address.
fn start(tag: &str, delay: &str) -> (Running, u16, String, TempDir) {
    require("python3");
    let dir = TempDir::new(tag);
    let server = dir.write("server.py", &python_server());
    let port = free_port();
    let mut command = forkline();
    command
        .args([
            "run",
            "-w",
            "2",
            "--mode",
            "shared",
            "--shutdown-delay",
            delay,
        ])
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--metrics",
            "127.0.0.1:0",
        ])
        .arg("--control")
        .arg(dir.path().join("control.sock"))
        .arg("--")
        .arg("python3")
        .arg(&server);
    let cluster = Running::spawn(command);
    let metrics = metrics_address(&cluster);
    let ready = until(STARTUP, || (readyz(&metrics) == Some(200)).then_some(()));
    assert!(ready.is_some(), "{}", cluster.output());
    answers_from_workers(port, 2, STARTUP);
    (cluster, port, metrics, dir)
}

/// The status code of `GET /readyz`.
fn readyz(metrics: &str) -> Option<u16> {
    get_path(metrics, "/readyz").map(|(code, _)| code)
}

/// SIGTERM with a 2 s delay: `/readyz` is 503 at once, every request during the delay is
/// answered, and the cluster stops (exit 0) only after the delay.
#[test]
fn a_lame_duck_keeps_serving_for_the_delay_then_stops() {
    let (mut cluster, port, metrics, _dir) = start("lame-duck", "2s");
    let asked = Instant::now();
    cluster.signal(Signal::SIGTERM);
    let unready = until(Duration::from_secs(1), || {
        (readyz(&metrics) == Some(503)).then_some(())
    });
    assert!(unready.is_some(), "{}", cluster.output());
    let mut served = 0;
    while asked.elapsed() < Duration::from_millis(1500) {
        let answer = http_get(port).expect("served during the delay");
        assert_eq!(answer.status, 200);
        served += 1;
    }
    assert!(served > 0);
    let status = cluster.wait_exit(STARTUP).expect("the primary stops");
    assert!(
        asked.elapsed() >= Duration::from_millis(1900),
        "stopped after {:?}",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", cluster.output());
    assert!(cluster
        .output()
        .contains("stopping after the shutdown delay"));
}

/// A second SIGTERM during a long delay stops gracefully at once.
#[test]
fn a_second_sigterm_ends_the_delay() {
    let (mut cluster, _port, metrics, _dir) = start("lame-duck-twice", "60s");
    let asked = Instant::now();
    cluster.signal(Signal::SIGTERM);
    let unready = until(STARTUP, || (readyz(&metrics) == Some(503)).then_some(()));
    assert!(unready.is_some(), "{}", cluster.output());
    cluster.signal(Signal::SIGTERM);
    let status = cluster.wait_exit(STARTUP).expect("the primary stops");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(0), "{}", cluster.output());
}
