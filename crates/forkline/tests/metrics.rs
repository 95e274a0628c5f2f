//! `/metrics` read by a Prometheus text parser and checked against known traffic, the status
//! reply's connection fields, and `/readyz` (one worker or every slot's) through restarts and
//! a failed reload.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{eventually, fetch, free_port, kill_pid, Testbed, SOON};
use prometheus_parse::{Sample, Scrape, Value};

/// An HTTP GET on 127.0.0.1: the status code and the body.
fn get(address: &str, path: &str) -> (u16, String) {
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

/// `/metrics`, parsed.
struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

impl Metrics {
    fn scrape(address: &str) -> Metrics {
        let (code, text) = get(address, "/metrics");
        assert_eq!(code, 200, "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics: {text}");
        let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("{e}: {text}"));
        Metrics {
            samples: scrape.samples,
            text,
        }
    }

    /// The value of series `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .filter(|s| s.metric == name && s.labels.len() == labels.len())
            .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match &s.value {
                Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => Some(*v),
                _ => None,
            })
    }

    /// The value of `name{labels}`, which must be there.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    /// The cumulative buckets of histogram `name`: (upper bound, count).
    fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        self.samples
            .iter()
            .find(|s| s.metric == name)
            .and_then(|s| match &s.value {
                Value::Histogram(buckets) => {
                    Some(buckets.iter().map(|b| (b.less_than, b.count)).collect())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no histogram {name} in:\n{}", self.text))
    }
}

/// Scrapes until `check` holds (counters reach their value a moment after the traffic: acks
/// are read asynchronously), or fails after [`SOON`] showing the last scrape.
fn scrape_until(address: &str, what: &str, check: impl Fn(&Metrics) -> bool) -> Metrics {
    let mut last = None;
    let ok = eventually(SOON, || {
        let metrics = Metrics::scrape(address);
        let done = check(&metrics);
        last = Some(metrics);
        done
    });
    let last = last.expect("scraped once");
    assert!(ok, "{what}; last scrape:\n{}", last.text);
    last
}

/// A fresh path for a control socket.
fn control_path(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("forkline-metrics-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("control").join("cluster.sock")
}

/// The control socket's `status` reply.
fn status(path: &Path) -> serde_json::Value {
    let mut stream = UnixStream::connect(path).expect("connect to the control socket");
    stream.set_read_timeout(Some(SOON)).unwrap();
    writeln!(stream, r#"{{"v":1,"cmd":"status"}}"#).unwrap();
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
}

/// Starts a round-robin cluster of `workers` serving on a fresh port with metrics on; waits
/// until every worker listens and is ready. Returns it, the serving address and the metrics
/// address.
fn cluster(workers: usize, extra: &[(&str, &str)]) -> (Testbed, String, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let metrics = format!("127.0.0.1:{}", free_port());
    let n = workers.to_string();
    let mut env = vec![
        ("TB_WORKERS", n.as_str()),
        ("TB_LISTEN", addr.as_str()),
        ("TB_METRICS", metrics.as_str()),
        ("TB_READY", "listen"),
    ];
    env.extend_from_slice(extra);
    let mut tb = Testbed::start(&env);
    for _ in 0..workers {
        tb.wait_event("listening", None);
    }
    scrape_until(&metrics, "every worker ready", |m| {
        m.value("forkline_workers", &[("state", "ready")]) == Some(workers as f64)
    });
    (tb, addr, metrics)
}

/// Connections per worker and their number: 35 each, so each worker acks once (acks come
/// every 32 with the default credit window of 64) and holds 3 unacknowledged.
const PER_WORKER: u64 = 35;
const ACK_EVERY: u64 = 32;

#[test]
fn metrics_count_known_traffic_and_restarts_by_reason() {
    let control = control_path("traffic");
    let (mut tb, addr, metrics) = cluster(
        2,
        &[
            ("TB_CONTROL", control.to_str().unwrap()),
            // Any death is young and waits a second for its restart: long enough to see.
            ("TB_MIN_UPTIME_MS", "600000"),
            ("TB_BACKOFF_MS", "1000"),
        ],
    );
    let before = Metrics::scrape(&metrics);
    assert_eq!(before.get("forkline_connections_accepted_total", &[]), 0.0);
    assert_eq!(
        before.histogram("forkline_handoff_latency_seconds").len(),
        15
    );

    // One client at a time: round-robin alternates strictly between the two workers.
    let n = 2 * PER_WORKER;
    for _ in 0..n {
        let reply = fetch(&addr).expect("fetch");
        assert!(reply.starts_with("worker "), "{reply:?}");
    }
    let m = scrape_until(&metrics, "one ack from each worker", |m| {
        m.value("forkline_handoff_latency_seconds_count", &[]) == Some(2.0)
    });
    let n = n as f64;
    assert_eq!(m.get("forkline_connections_accepted_total", &[]), n);
    assert_eq!(m.get("forkline_connections_handed_off_total", &[]), n);
    assert_eq!(m.get("forkline_connections_redispatched_total", &[]), 0.0);
    for kind in ["fd_limit", "no_memory", "other"] {
        assert_eq!(
            m.get("forkline_accept_errors_total", &[("kind", kind)]),
            0.0
        );
    }
    for slot in ["0", "1"] {
        let slot = &[("slot", slot)];
        assert_eq!(
            m.get("forkline_worker_connections_served_total", slot),
            PER_WORKER as f64
        );
        assert_eq!(
            m.get("forkline_worker_connections", slot),
            PER_WORKER as f64
        );
        // Handed over but not acknowledged: the rest of the next ack batch.
        assert_eq!(
            m.get("forkline_worker_connections_in_flight", slot),
            (PER_WORKER - ACK_EVERY) as f64
        );
        assert!(m.get("forkline_worker_cpu_seconds_total", slot) >= 0.0);
        assert!(m.get("forkline_worker_resident_memory_bytes", slot) > 0.0);
    }
    // One latency sample per ack, every one in some bucket: cumulative, ending at +Inf.
    let buckets = m.histogram("forkline_handoff_latency_seconds");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, 2.0)), "{buckets:?}");
    assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
    let sum = m.get("forkline_handoff_latency_seconds_sum", &[]);
    assert!(sum > 0.0 && sum < 10.0, "{sum}");
    // The accept loop's coalescing state is shown for the listener (off: one client at a time).
    assert_eq!(
        m.get("forkline_accept_coalescing", &[("listener", &addr)]),
        0.0
    );
    assert_eq!(m.get("forkline_reloading", &[]), 0.0);

    // The status reply has the same numbers, by the names `forkline top` reads.
    let s = status(&control);
    assert_eq!(s["accepted_total"], 2 * PER_WORKER, "{s}");
    assert_eq!(s["handed_off_total"], 2 * PER_WORKER, "{s}");
    assert_eq!(s["redispatched_total"], 0, "{s}");
    assert_eq!(s["accept_errors_total"], 0, "{s}");
    assert_eq!(s["reloading"], false, "{s}");
    for w in s["workers"].as_array().unwrap() {
        assert_eq!(w["connections"], PER_WORKER, "{s}");
        assert_eq!(w["connections_served"], PER_WORKER, "{s}");
        assert_eq!(w["connections_in_flight"], PER_WORKER - ACK_EVERY, "{s}");
        assert!(w["cpu_percent"].as_f64().is_some_and(|p| p >= 0.0), "{s}");
    }

    // A worker killed by a signal: one restart for that reason, and none for any other.
    let victim = s["workers"][0]["pid"].as_u64().unwrap();
    kill_pid(victim);
    tb.wait_event("restarting", Some(0));
    let m = Metrics::scrape(&metrics);
    assert_eq!(
        m.get("forkline_restarts_total", &[("reason", "signal")]),
        1.0
    );
    for reason in [
        "exit",
        "crash",
        "ready_timeout",
        "killed",
        "reload",
        "recycle",
    ] {
        assert_eq!(
            m.get("forkline_restarts_total", &[("reason", reason)]),
            0.0,
            "{reason}"
        );
    }
    // Meanwhile (the restart waits a second) the other worker keeps the cluster ready.
    assert_eq!(get(&metrics, "/readyz").0, 200);
    tb.wait_event("listening", Some(0));
    // The new worker's counts start from zero; the cluster's do not.
    let m = scrape_until(&metrics, "both ready again", |m| {
        m.value("forkline_workers", &[("state", "ready")]) == Some(2.0)
    });
    assert_eq!(
        m.get("forkline_worker_connections_served_total", &[("slot", "0")]),
        0.0
    );
    assert_eq!(m.get("forkline_connections_accepted_total", &[]), n);
}

#[test]
fn readyz_requires_all_follows_a_restart_and_a_failed_reload() {
    let dir = std::env::temp_dir().join(format!("forkline-metrics-{}-bad", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let marker = dir.join("bad-build");
    let _ = std::fs::remove_file(&marker);
    let (mut tb, _addr, metrics) = cluster(
        2,
        &[
            ("TB_READYZ_ALL", "1"),
            ("TB_BAD_IF", marker.to_str().unwrap()),
            // The replacement comes up, listens, is ready, then exits 4 during its settle time.
            ("TB_BAD", "die-later"),
            // Any death is young and waits 2 s for its restart: /readyz is seen failing.
            ("TB_MIN_UPTIME_MS", "600000"),
            ("TB_BACKOFF_MS", "2000"),
        ],
    );
    assert_eq!(get(&metrics, "/readyz").0, 200);

    // One slot restarting: not every slot is ready.
    let pid = tb
        .seen
        .iter()
        .find(|e| e["event"] == "listening" && e["id"] == 1)
        .and_then(|e| e["pid"].as_u64())
        .unwrap();
    kill_pid(pid);
    tb.wait_event("restarting", Some(1));
    let (code, body) = get(&metrics, "/readyz");
    assert_eq!(code, 503, "{body}");
    tb.wait_event("listening", Some(1));
    assert!(
        eventually(SOON, || get(&metrics, "/readyz").0 == 200),
        "ready again once the slot's new worker is"
    );

    // A reload whose first replacement dies on trial: the old workers keep every slot ready,
    // so /readyz answers 200 all along.
    std::fs::write(&marker, b"").unwrap();
    let polling = AtomicBool::new(true);
    let (codes, saw_reloading) = std::thread::scope(|s| {
        let poller = s.spawn(|| {
            let mut codes = Vec::new();
            let mut saw_reloading = false;
            while polling.load(Ordering::Relaxed) {
                codes.push(get(&metrics, "/readyz").0);
                saw_reloading |=
                    Metrics::scrape(&metrics).value("forkline_reloading", &[]) == Some(1.0);
                std::thread::sleep(Duration::from_millis(10));
            }
            (codes, saw_reloading)
        });
        tb.command("reload");
        let reply = tb.wait_for("reload reply", Duration::from_secs(30), |e| {
            e["command"] == "reload"
        });
        assert!(
            reply["error"]
                .as_str()
                .is_some_and(|e| e.contains("exited with code 4")),
            "{reply}"
        );
        polling.store(false, Ordering::Relaxed);
        poller.join().unwrap()
    });
    let _ = std::fs::remove_file(&marker);
    assert!(!codes.is_empty());
    assert!(
        codes.iter().all(|c| *c == 200),
        "/readyz during the failed reload: {codes:?}"
    );
    assert!(saw_reloading, "forkline_reloading was 1 during the reload");
    let m = Metrics::scrape(&metrics);
    assert_eq!(
        m.get("forkline_reloads_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(m.get("forkline_reloads_total", &[("result", "ok")]), 0.0);
    assert_eq!(m.get("forkline_reloading", &[]), 0.0);
    assert_eq!(
        m.get("forkline_restarts_total", &[("reason", "signal")]),
        1.0
    );
    assert_eq!(
        m.get("forkline_restarts_total", &[("reason", "reload")]),
        0.0
    );
    assert_eq!(get(&metrics, "/readyz").0, 200);
}

#[test]
fn restarts_after_a_ready_timeout_or_a_protocol_error_say_so() {
    // Never ready (it sends no READY=1): killed at the ready timeout, then restarted.
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_PLAIN", "1"),
        ("TB_EXEC", "/bin/sleep"),
        ("TB_ARGS", "300"),
        ("TB_NOTIFY", "1"),
        ("TB_READY_TIMEOUT_MS", "300"),
        ("TB_METRICS", &metrics),
    ]);
    tb.wait_event("restarting", Some(0));
    let m = Metrics::scrape(&metrics);
    assert!(m.get("forkline_restarts_total", &[("reason", "ready_timeout")]) >= 1.0);
    assert_eq!(
        m.get("forkline_restarts_total", &[("reason", "signal")]),
        0.0
    );
    drop(tb);

    // Garbage on the IPC channel: the primary kills it.
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut tb = Testbed::start(&[
        ("TB_WORKERS", "1"),
        ("TB_BEHAVIOR", "garbage"),
        ("TB_METRICS", &metrics),
    ]);
    tb.wait_event("restarting", Some(0));
    let m = Metrics::scrape(&metrics);
    assert!(m.get("forkline_restarts_total", &[("reason", "killed")]) >= 1.0);
    assert_eq!(
        m.get("forkline_restarts_total", &[("reason", "signal")]),
        0.0
    );
    assert_eq!(
        m.get("forkline_restarts_total", &[("reason", "crash")]),
        0.0
    );
}
