//! The control socket with real processes: status, scale, restart, reload and stop over JSON
//! lines; malformed requests; a clash with a live cluster; a stale socket; another user.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use common::{Testbed, SOON};
use serde_json::{json, Value};

/// A fresh directory for control sockets (the primary creates `dir/control/...`).
fn control_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forkline-control-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("control").join("cluster.sock")
}

/// Sends one request line and reads the reply line.
fn ask(path: &Path, request: &str) -> Value {
    let mut stream = UnixStream::connect(path).expect("connect to the control socket");
    stream.set_read_timeout(Some(SOON * 2)).unwrap();
    writeln!(stream, "{request}").unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

fn pids(status: &Value) -> Vec<u64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|w| w["pid"].as_u64())
        .collect()
}

#[test]
fn a_running_cluster_answers_on_its_control_socket() {
    let path = control_path("commands");
    let mut tb = Testbed::start(&[("TB_WORKERS", "2"), ("TB_CONTROL", path.to_str().unwrap())]);
    tb.wait_online(2);
    let mode = |p: &Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);

    let status = ask(&path, r#"{"v":1,"cmd":"status"}"#);
    assert_eq!(status["ok"], true, "{status}");
    assert_eq!(status["pid"], tb.pid());
    assert_eq!(status["target"], 2);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);
    assert!(status["workers"][0]["rss_bytes"].as_u64().unwrap() > 0);

    // Bad input gets an error reply, and the primary carries on.
    assert_eq!(ask(&path, "not json")["ok"], false);
    assert_eq!(ask(&path, r#"{"v":2,"cmd":"status"}"#)["ok"], false);
    assert_eq!(
        ask(&path, r#"{"v":1,"cmd":"scale","workers":0}"#)["ok"],
        false
    );
    assert_eq!(
        ask(&path, r#"{"v":1,"cmd":"restart","slot":9}"#)["ok"],
        false
    );

    let scaled = ask(&path, r#"{"v":1,"cmd":"scale","delta":1}"#);
    assert_eq!(scaled, json!({"ok": true, "workers": 3}));
    tb.wait_event("online", Some(2));

    let before = pids(&ask(&path, r#"{"v":1,"cmd":"status"}"#));
    let restarted = ask(&path, r#"{"v":1,"cmd":"restart","slot":0}"#);
    assert_eq!(restarted["ok"], true, "{restarted}");
    let reloaded = ask(&path, r#"{"v":1,"cmd":"reload"}"#);
    assert_eq!(reloaded["ok"], true, "{reloaded}");
    let after = pids(&ask(&path, r#"{"v":1,"cmd":"status"}"#));
    assert_eq!(after.len(), 3);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );

    assert_eq!(ask(&path, r#"{"v":1,"cmd":"stop"}"#)["ok"], true);
    let stopped = tb.wait_for("stopped", SOON, |e| e["event"] == "stopped");
    assert_eq!(stopped["clean"], true);
    assert!(
        common::eventually(SOON, || !path.exists()),
        "the socket file is removed"
    );
}

#[test]
fn a_live_clusters_socket_is_refused_and_a_stale_one_replaced() {
    let path = control_path("clash");
    let control = path.to_str().unwrap();
    let mut first = Testbed::start(&[("TB_WORKERS", "1"), ("TB_CONTROL", control)]);
    first.wait_online(1);
    let mut second = Testbed::start(&[("TB_WORKERS", "1"), ("TB_CONTROL", control)]);
    let error = second.wait_event("error", None);
    assert!(
        error["error"].as_str().unwrap().contains(control),
        "names the socket: {error}"
    );
    // The first is untouched.
    assert_eq!(ask(&path, r#"{"v":1,"cmd":"status"}"#)["ok"], true);

    // Killed, it leaves its socket file behind: the next primary replaces it.
    first.signal(nix::sys::signal::Signal::SIGKILL);
    first.wait_exit(SOON).expect("gone");
    assert!(path.exists());
    let mut third = Testbed::start(&[("TB_WORKERS", "1"), ("TB_CONTROL", control)]);
    third.wait_online(1);
    assert_eq!(ask(&path, r#"{"v":1,"cmd":"status"}"#)["pid"], third.pid());
}

#[test]
fn another_user_cannot_reach_the_control_socket() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: it needs root to run a process as another user");
        return;
    }
    let path = control_path("nobody");
    let mut tb = Testbed::start(&[("TB_WORKERS", "1"), ("TB_CONTROL", path.to_str().unwrap())]);
    tb.wait_online(1);
    use std::os::unix::process::CommandExt;
    let reached = std::process::Command::new("python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'{\"v\":1,\"cmd\":\"stop\"}\\n'); print(s.recv(100))",
            path.to_str().unwrap(),
        ])
        .uid(65534)
        .gid(65534)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!reached.success(), "user nobody reached the control socket");
    assert_eq!(
        ask(&path, r#"{"v":1,"cmd":"status"}"#)["ok"],
        true,
        "still running"
    );
}

/// An HTTP GET on 127.0.0.1: the status code and the body.
fn get(address: &str, path: &str) -> (u16, String) {
    use std::io::Read;
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the metrics port");
    stream.set_read_timeout(Some(SOON)).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// The value of the sample `series` (with its labels, as printed) in Prometheus text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn metrics_and_probes_follow_the_cluster() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let path = control_path("metrics");
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "2"),
        ("TB_METRICS", &metrics),
        ("TB_CONTROL", path.to_str().unwrap()),
    ]);
    tb.wait_online(2);
    assert_eq!(get(&metrics, "/healthz").0, 200);
    assert_eq!(get(&metrics, "/readyz").0, 200);
    let (code, text) = get(&metrics, "/metrics");
    assert_eq!(code, 200);
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text: {text}"
    );
    assert_eq!(
        sample(&text, "forkline_workers{state=\"ready\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "forkline_worker_slots"), Some(2.0), "{text}");
    assert_eq!(
        sample(&text, "forkline_reloads_total{result=\"ok\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(sample(&text, "forkline_worker_resident_memory_bytes{slot=\"0\"}").unwrap() > 0.0);

    assert_eq!(ask(&path, r#"{"v":1,"cmd":"reload"}"#)["ok"], true);
    let (_, text) = get(&metrics, "/metrics");
    assert_eq!(
        sample(&text, "forkline_reloads_total{result=\"ok\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "forkline_restarts_total{reason=\"reload\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "forkline_restarts_total{reason=\"crash\"}"),
        Some(0.0),
        "{text}"
    );
}

#[test]
fn readyz_fails_while_no_worker_is_ready_and_a_taken_metrics_port_is_named() {
    let metrics = format!("127.0.0.1:{}", common::free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "/bin/sleep"),
        ("TB_ARGS", "300"),
        ("TB_NOTIFY", "1"),
        ("TB_METRICS", &metrics),
    ]);
    tb.wait_event("fork", Some(0));
    assert_eq!(get(&metrics, "/healthz").0, 200);
    assert_eq!(get(&metrics, "/readyz").0, 503);
    // The same address again: a start error naming it.
    let mut second = Testbed::start(&[("TB_WORKERS", "1"), ("TB_METRICS", &metrics)]);
    let error = second.wait_event("error", None);
    assert!(
        error["error"].as_str().unwrap().contains(&metrics),
        "{error}"
    );
}
