//! Every form of `server.listen()` an unmodified Node app makes, answered by forkline's primary
//! over Node's own cluster channel (`--ipc node`), with real Node 18, 20 and 22 in shared,
//! reuseport and steer modes: a port, a port on 127.0.0.1 and on ::1, `listen(0)` (the nth of
//! every worker shares one port), Unix paths (absolute, and relative to the worker's cwd past
//! `sun_path`), UDP, HTTPS; bind errors as Node's codes; an app with its own
//! `cluster.isPrimary` branch; an express app. Node 20 is the system's `node`; 18 and 22 and
//! express come from npm through `scripts/need.sh` (into target/test-deps/, or
//! `$FORKLINE_TEST_DEPS`). Real processes, real sockets on 127.0.0.1, ::1 and temp-dir paths.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const STARTUP: Duration = Duration::from_secs(30);

/// The app of the listen-form tests: opens the servers its argument lists, reports each to the
/// primary, answers with its cluster id.
const LISTEN_FORMS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/listen_forms.js"
);

/// `sockaddr_un.sun_path`'s size: a longer path cannot be bound or connected to directly.
const SUN_PATH: usize = 108;

/// `forkline run -w 2 --mode MODE --ipc node --cwd CWD EXTRA -- NODE SCRIPT ARGS`.
fn start(
    node: Node,
    mode: &str,
    cwd: &Path,
    extra: &[&str],
    script: &Path,
    args: &[&str],
) -> Running {
    let mut command = forkline();
    command
        .args(["run", "-w", "2", "--mode", mode, "--ipc", "node", "--cwd"])
        .arg(cwd)
        .args(extra)
        .arg("--")
        .arg(node.binary())
        .arg(script)
        .args(args);
    Running::spawn(command)
}

/// The JSON a worker sent with `process.send`, from the primary's log line for it.
fn sent_message(line: &str) -> Option<Value> {
    if !line.contains("message from worker") {
        return None;
    }
    serde_json::from_str(&line[line.find('{')?..]).ok()
}

/// What each of the 2 workers reported on each of `servers` servers (its listening address,
/// or its error), by (server, worker id); waits for all of them.
fn reports(cluster: &Running, servers: usize) -> BTreeMap<(u64, u64), Value> {
    let found = cluster.stderr.wait_until(STARTUP, |lines| {
        let mut by = BTreeMap::new();
        for message in lines.iter().filter_map(|l| sent_message(l)) {
            if let (Some(server), Some(id)) = (message["server"].as_u64(), message["id"].as_u64()) {
                by.insert((server, id), message);
            }
        }
        (by.len() == 2 * servers).then_some(by)
    });
    found.unwrap_or_else(|| {
        panic!(
            "not both workers reported on their {servers} servers\n{}",
            cluster.output()
        )
    })
}

/// Both workers' listening addresses for `server` (Node's `server.address()`), asserting
/// neither got an error.
fn listening(reports: &BTreeMap<(u64, u64), Value>, server: u64) -> [Value; 2] {
    [0, 1].map(|id| {
        let report = &reports[&(server, id)];
        assert!(
            report["error"].is_null(),
            "server {server}, worker {id}: {report}"
        );
        report["listening"].clone()
    })
}

/// One `GET /` over HTTP/1.0 on `stream`; the body.
fn get_over(mut stream: impl Read + Write) -> std::io::Result<String> {
    stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(format!("not a 200 answer: {text:?}"))),
    }
}

/// `GET /` from a TCP address.
fn get_tcp(address: SocketAddr) -> std::io::Result<String> {
    let stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    get_over(stream)
}

/// Connects to the Unix socket at `path`; one longer than `sun_path` through its directory's
/// descriptor (`/proc/self/fd/N/NAME`), as the primary binds it.
fn connect_unix(path: &Path) -> std::io::Result<UnixStream> {
    if path.as_os_str().len() < SUN_PATH {
        return UnixStream::connect(path);
    }
    let dir = std::fs::File::open(path.parent().expect("a directory"))?;
    let name = path.file_name().expect("a file name");
    UnixStream::connect(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
}

/// `GET /` over the Unix socket at `path`.
fn get_unix(path: &Path) -> std::io::Result<String> {
    let stream = connect_unix(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    get_over(stream)
}

/// A port that is free for TCP on 127.0.0.1 ([`free_port`]) and for UDP on any address.
fn free_udp_port() -> u16 {
    loop {
        let port = free_port();
        if UdpSocket::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// One datagram to `address` from a new socket (a new source port each time), and the answer.
fn ask_udp(address: SocketAddr) -> std::io::Result<String> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    socket.send_to(b"who", address)?;
    let mut buf = [0; 512];
    let (n, _) = socket.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Asks with `ask` until both workers (cluster ids 0 and 1) answered, each answer from server
/// `server` of a Node `node`; returns how many answers each id gave.
fn both_answer(
    cluster: &Running,
    node: Node,
    what: &str,
    server: u64,
    ask: impl Fn() -> std::io::Result<String>,
) -> BTreeMap<String, usize> {
    let mut by_id = BTreeMap::new();
    let mut failures = Vec::new();
    let deadline = Instant::now() + STARTUP;
    while by_id.len() < 2 && Instant::now() < deadline {
        match ask() {
            Ok(body) => {
                assert_eq!(
                    field(&body, "server"),
                    Some(&*server.to_string()),
                    "{what}: {body}"
                );
                let version = field(&body, "version").unwrap_or("");
                assert!(
                    node.is(version),
                    "{what}: not Node {}: {body}",
                    node.major()
                );
                *by_id
                    .entry(field(&body, "id").unwrap_or("?").to_string())
                    .or_insert(0) += 1;
            }
            Err(e) => {
                failures.push(e.to_string());
                std::thread::sleep(Duration::from_millis(25));
            }
        }
    }
    let ids: Vec<&str> = by_id.keys().map(String::as_str).collect();
    assert_eq!(
        ids,
        ["0", "1"],
        "{what}: answers by worker {by_id:?}, failures {failures:?}\n{}",
        cluster.output()
    );
    by_id
}

/// Steer mode with BPF: 20 connections to `address` go round-robin, 10 to each worker (one off
/// allowed: a retransmitted SYN takes a second turn).
fn steered_evenly(cluster: &Running, what: &str, address: SocketAddr) {
    let mut by_id = BTreeMap::new();
    for _ in 0..20 {
        let body = get_tcp(address).unwrap_or_else(|e| panic!("{what}: {e}"));
        *by_id
            .entry(field(&body, "id").unwrap_or("?").to_string())
            .or_insert(0) += 1;
    }
    let even = by_id.len() == 2 && by_id.values().all(|n| (9..=11).contains(n));
    assert!(even, "{what}: {by_id:?}\n{}", cluster.output());
}

/// True when the cluster's steer mode loaded its BPF program (else it fell back to reuseport).
fn steering_with_bpf(cluster: &Running) -> bool {
    cluster
        .stderr
        .wait_for(STARTUP, |l| {
            l.contains("steers new connections") || l.contains("BPF refused")
        })
        .is_some_and(|l| l.contains("steers new connections (BPF"))
}

/// A self-signed certificate for localhost made by `openssl` in `dir`: (key, cert).
fn self_signed(dir: &TempDir) -> (PathBuf, PathBuf) {
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let mut command = Command::new(system_program("openssl"));
    command
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert);
    let made = run_to_end(command, STARTUP);
    assert_eq!(made.code, Some(0), "openssl: {}", made.stderr);
    (key, cert)
}

/// A Node HTTPS client: `GET /` on 127.0.0.1:PORT, one connection each, until answers came
/// from two worker ids or 20 s passed; prints each body after the TLS protocol used.
const TLS_CLIENT: &str = r#"
const https = require('https');
const port = Number(process.argv[2]);
const deadline = Date.now() + 20000;
const ids = new Set();
function next() {
  if (ids.size >= 2 || Date.now() > deadline) return;
  https.get({ host: '127.0.0.1', port, rejectUnauthorized: false, agent: false }, (res) => {
    const protocol = res.socket.getProtocol();
    let body = '';
    res.on('data', (d) => body += d);
    res.on('end', () => {
      process.stdout.write(`tls=${protocol} ${body}`);
      const id = /id=(\d+)/.exec(body);
      if (id) ids.add(id[1]);
      next();
    });
  }).on('error', (e) => { console.log(`error=${e.code}`); setTimeout(next, 25); });
}
next();
"#;

/// The answers of both workers over HTTPS on `port`, fetched by a `node` client.
fn both_answer_tls(cluster: &Running, node: Node, dir: &TempDir, port: u16, server: u64) {
    let client = dir.write("tls_client.js", TLS_CLIENT);
    let mut command = Command::new(node.binary());
    command.arg(&client).arg(port.to_string());
    let done = run_to_end(command, STARTUP);
    let mut ids = std::collections::BTreeSet::new();
    for line in done.stdout.lines().filter(|l| l.starts_with("tls=")) {
        assert!(
            field(line, "tls").is_some_and(|p| p.starts_with("TLSv1.")),
            "{line}"
        );
        assert_eq!(field(line, "server"), Some(&*server.to_string()), "{line}");
        ids.extend(field(line, "id").map(str::to_string));
    }
    assert_eq!(
        ids.into_iter().collect::<Vec<_>>(),
        ["0", "1"],
        "HTTPS answers:\n{}{}\n{}",
        done.stdout,
        done.stderr,
        cluster.output()
    );
}

/// A directory in `dir` deep enough that `NAME` in it has an absolute path longer than
/// `sun_path`.
fn deep_cwd(dir: &TempDir, name: &str) -> PathBuf {
    let mut cwd = dir.path().join("w");
    while cwd.join(name).as_os_str().len() <= SUN_PATH + 8 {
        cwd.push("deep-directory-of-the-worker");
    }
    std::fs::create_dir_all(&cwd).unwrap();
    cwd
}

/// One cluster of `node` in `mode` whose app opens every listen form at once, checked form by
/// form; then a graceful stop, which removes the Unix socket files.
fn every_form(node: Node, mode: &str) {
    let dir = TempDir::new(&format!("listen-{}-{mode}", node.major()));
    let cwd = deep_cwd(&dir, "rel.sock");
    let long = cwd.join("rel.sock");
    assert!(long.as_os_str().len() > SUN_PATH, "{}", long.display());
    let absolute = dir.path().join("abs.sock");
    let (key, cert) = self_signed(&dir);
    let [port, on_v4, on_v6, tls] = [(); 4].map(|()| free_port());
    let udp = free_udp_port();
    let specs = json!([
        {"kind": "http", "port": port},
        {"kind": "http", "port": on_v4, "host": "127.0.0.1"},
        {"kind": "http", "port": on_v6, "host": "::1"},
        {"kind": "http", "port": 0},
        {"kind": "http", "port": 0},
        {"kind": "http", "path": absolute},
        {"kind": "http", "path": "rel.sock"},
        {"kind": "udp", "port": udp},
        {"kind": "https", "port": tls, "key": key, "cert": cert},
    ]);
    let mut cluster = start(
        node,
        mode,
        &cwd,
        &[],
        Path::new(LISTEN_FORMS),
        &[&specs.to_string()],
    );
    let reports = reports(&cluster, 9);
    let label = |what: &str| format!("Node {} {mode}: {what}", node.major());
    let v4 = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = |port: u16| SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));

    // listen(port): Node's default, any address (IPv6 dual-stack): over IPv4 and IPv6.
    for address in listening(&reports, 0) {
        assert_eq!(address["port"], json!(port), "{address}");
    }
    both_answer(&cluster, node, &label("listen(port) over IPv4"), 0, || {
        get_tcp(v4(port))
    });
    both_answer(&cluster, node, &label("listen(port) over IPv6"), 0, || {
        get_tcp(v6(port))
    });
    // listen(port, host): that address only.
    for (server, host, address) in [(1, "127.0.0.1", v4(on_v4)), (2, "::1", v6(on_v6))] {
        for reported in listening(&reports, server) {
            assert_eq!(reported["address"], json!(host), "{reported}");
            assert_eq!(reported["port"], json!(address.port()), "{reported}");
        }
        let what = label(&format!("listen(port, '{host}')"));
        both_answer(&cluster, node, &what, server, || get_tcp(address));
    }
    // listen(0), twice: the first of each worker shares one port, the second another.
    let zeros = [3, 4].map(|server| {
        let [first, second] = listening(&reports, server).map(|a| a["port"].as_u64().unwrap());
        assert_eq!(
            first,
            second,
            "{}",
            label(&format!("listen(0) #{}", server - 3))
        );
        assert_ne!(first, 0);
        first as u16
    });
    assert_ne!(zeros[0], zeros[1], "{}", label("two listen(0)s, one port"));
    for (server, zero) in [3, 4].into_iter().zip(zeros) {
        let what = label(&format!("listen(0) #{} on {zero}", server - 3));
        both_answer(&cluster, node, &what, server, || get_tcp(v4(zero)));
    }
    // Unix paths: absolute, and relative to the cwd (Node makes it absolute: past sun_path).
    for address in listening(&reports, 5) {
        assert_eq!(address, json!(absolute), "{address}");
    }
    both_answer(&cluster, node, &label("listen(absolute path)"), 5, || {
        get_unix(&absolute)
    });
    for address in listening(&reports, 6) {
        assert_eq!(address, json!("rel.sock"), "{address}");
    }
    use std::os::unix::fs::FileTypeExt;
    assert!(
        std::fs::metadata(&long).is_ok_and(|m| m.file_type().is_socket()),
        "{} is no socket\n{}",
        long.display(),
        cluster.output()
    );
    let what = label("listen(relative path, absolute past sun_path)");
    both_answer(&cluster, node, &what, 6, || get_unix(&long));
    // UDP: bound once, every worker receives.
    for address in listening(&reports, 7) {
        assert_eq!(address["port"], json!(udp), "{address}");
    }
    both_answer(&cluster, node, &label("dgram bind(port)"), 7, || {
        ask_udp(v4(udp))
    });
    // HTTPS: both workers serve TLS.
    listening(&reports, 8);
    both_answer_tls(&cluster, node, &dir, tls, 8);
    // Steer mode: the kernel's program takes turns on every TCP server.
    if mode == "steer" && steering_with_bpf(&cluster) {
        let steered = [port, on_v4, zeros[0], zeros[1]].map(v4);
        for address in steered.into_iter().chain([v6(on_v6)]) {
            steered_evenly(&cluster, &label(&format!("steered to {address}")), address);
        }
    }
    cluster.stop_cleanly();
    for path in [&absolute, &long] {
        assert!(!path.exists(), "{} left behind", path.display());
    }
}

#[test]
fn node18_every_listen_form_in_shared_mode() {
    every_form(Node::V18, "shared");
}

#[test]
fn node18_every_listen_form_in_reuseport_mode() {
    every_form(Node::V18, "reuseport");
}

#[test]
fn node18_every_listen_form_in_steer_mode() {
    every_form(Node::V18, "steer");
}

#[test]
fn node20_every_listen_form_in_shared_mode() {
    every_form(Node::V20, "shared");
}

#[test]
fn node20_every_listen_form_in_reuseport_mode() {
    every_form(Node::V20, "reuseport");
}

#[test]
fn node20_every_listen_form_in_steer_mode() {
    every_form(Node::V20, "steer");
}

#[test]
fn node22_every_listen_form_in_shared_mode() {
    every_form(Node::V22, "shared");
}

#[test]
fn node22_every_listen_form_in_reuseport_mode() {
    every_form(Node::V22, "reuseport");
}

#[test]
fn node22_every_listen_form_in_steer_mode() {
    every_form(Node::V22, "steer");
}

/// An IPv4 address that is not on this machine (one of the documentation networks): binding
/// it fails with EADDRNOTAVAIL.
fn address_not_here() -> &'static str {
    ["192.0.2.1", "198.51.100.1", "203.0.113.1"]
        .into_iter()
        .find(|host| {
            TcpListener::bind((*host, 0))
                .is_err_and(|e| e.raw_os_error() == Some(nix::libc::EADDRNOTAVAIL))
        })
        .expect("one of the documentation addresses is not on this machine")
}

/// Each worker's server gets Node's own error code from `bind` on its `'error'` event — a port
/// another process holds (TCP, TCP on any address, UDP), an address not on the machine — and
/// the primary carries on: the app's other server serves from both workers.
fn bind_errors(node: Node, mode: &str) {
    let dir = TempDir::new(&format!("listen-errors-{}-{mode}", node.major()));
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let taken_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let taken_udp_port = taken_udp.local_addr().unwrap().port();
    let good = free_port();
    let specs = json!([
        {"kind": "http", "port": taken_port, "host": "127.0.0.1"},
        {"kind": "http", "port": taken_port},
        {"kind": "udp", "port": taken_udp_port, "host": "127.0.0.1"},
        {"kind": "http", "port": free_port(), "host": address_not_here()},
        {"kind": "http", "port": good, "host": "127.0.0.1"},
    ]);
    let mut cluster = start(
        node,
        mode,
        dir.path(),
        &[],
        Path::new(LISTEN_FORMS),
        &[&specs.to_string()],
    );
    let reports = reports(&cluster, 5);
    let expected = ["EADDRINUSE", "EADDRINUSE", "EADDRINUSE", "EADDRNOTAVAIL"];
    for (server, code) in expected.into_iter().enumerate() {
        for id in 0..2 {
            let report = &reports[&(server as u64, id)];
            assert_eq!(report["error"], json!(code), "server {server}: {report}");
            assert_eq!(
                report["syscall"],
                json!("bind"),
                "server {server}: {report}"
            );
        }
    }
    listening(&reports, 4);
    let what = format!("Node {} {mode}: the server that could bind", node.major());
    both_answer(&cluster, node, &what, 4, || {
        get_tcp(SocketAddr::from(([127, 0, 0, 1], good)))
    });
    cluster.stop_cleanly();
    drop((taken, taken_udp));
}

#[test]
fn node18_bind_errors_reach_the_app_as_nodes_codes() {
    bind_errors(Node::V18, "shared");
}

#[test]
fn node20_bind_errors_reach_the_app_as_nodes_codes_in_shared_mode() {
    bind_errors(Node::V20, "shared");
}

#[test]
fn node20_bind_errors_reach_the_app_as_nodes_codes_in_reuseport_mode() {
    bind_errors(Node::V20, "reuseport");
}

#[test]
fn node20_bind_errors_reach_the_app_as_nodes_codes_in_steer_mode() {
    bind_errors(Node::V20, "steer");
}

#[test]
fn node22_bind_errors_reach_the_app_as_nodes_codes() {
    bind_errors(Node::V22, "shared");
}

/// A port below `ip_unprivileged_port_start` needs privilege: a primary that has none (run as
/// nobody when the test runs as root) answers the app's listen with Node's EACCES, and serves
/// its other server. Where every port is unprivileged (the sysctl is 0), the listen succeeds.
#[test]
fn node20_a_privileged_port_is_eacces_for_an_unprivileged_primary() {
    let node = Node::V20;
    let dir = TempDir::new("listen-eacces");
    let start_at: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024);
    let good = free_port();
    let low = start_at.saturating_sub(1).max(1);
    let specs = json!([
        {"kind": "http", "port": low, "host": "127.0.0.1"},
        {"kind": "http", "port": good, "host": "127.0.0.1"},
    ]);
    let mut command = forkline();
    if nix::unistd::geteuid().is_root() {
        // The same command as nobody: no CAP_NET_BIND_SERVICE (setuid clears the capabilities).
        let mut as_nobody = Command::new(system_program("setpriv"));
        as_nobody
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(command.get_program());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => as_nobody.env(key, value),
                None => as_nobody.env_remove(key),
            };
        }
        command = as_nobody;
    }
    command
        .args([
            "run", "-w", "2", "--mode", "shared", "--ipc", "node", "--cwd",
        ])
        .arg(dir.path())
        .arg("--")
        .arg(node.binary())
        .arg(LISTEN_FORMS)
        .arg(specs.to_string());
    let mut cluster = Running::spawn(command);
    let reports = reports(&cluster, 2);
    for id in 0..2 {
        let report = &reports[&(0, id)];
        if start_at == 0 {
            assert!(report["error"].is_null(), "{report}");
        } else {
            assert_eq!(report["error"], json!("EACCES"), "port {low}: {report}");
            assert_eq!(report["syscall"], json!("bind"), "{report}");
        }
    }
    listening(&reports, 1);
    let what = "Node 20 as nobody: the server that could bind";
    both_answer(&cluster, node, what, 1, || {
        get_tcp(SocketAddr::from(([127, 0, 0, 1], good)))
    });
    cluster.stop_cleanly();
}

/// An app written for Node's own cluster: the primary branch forks, the worker branch listens.
/// Under forkline every process is a worker, so only the worker branch runs.
const OWN_PRIMARY_BRANCH: &str = r#"
const cluster = require('cluster');
const http = require('http');
if (cluster.isPrimary) {
  console.log('the primary branch ran');
  for (let i = 0; i < 2; i++) cluster.fork();
} else {
  http.createServer((req, res) =>
    res.end(`id=${cluster.worker.id} pid=${process.pid} server=0 version=${process.version}\n`))
    .listen(Number(process.argv[2]));
}
"#;

/// The app's own `if (cluster.isPrimary) fork() else listen()` runs its worker branch in both
/// workers: both serve, neither forks a worker of its own, the primary branch never runs.
fn own_primary_branch(node: Node, mode: &str) {
    let dir = TempDir::new(&format!("listen-own-primary-{}-{mode}", node.major()));
    let script = dir.write("app.js", OWN_PRIMARY_BRANCH);
    let port = free_port();
    let mut cluster = start(node, mode, dir.path(), &[], &script, &[&port.to_string()]);
    let what = format!("Node {} {mode}: the worker branch", node.major());
    both_answer(&cluster, node, &what, 0, || {
        get_tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    });
    let workers = children_of(cluster.pid());
    assert_eq!(workers.len(), 2, "{workers:?}\n{}", cluster.output());
    for worker in workers {
        let own = children_of(worker);
        assert!(
            own.is_empty(),
            "worker {worker} forked {own:?}\n{}",
            cluster.output()
        );
    }
    cluster.stop_cleanly();
    assert!(
        !cluster.output().contains("the primary branch ran"),
        "{}",
        cluster.output()
    );
}

#[test]
fn node18_an_apps_own_primary_branch_is_skipped() {
    own_primary_branch(Node::V18, "reuseport");
}

#[test]
fn node20_an_apps_own_primary_branch_is_skipped_in_shared_mode() {
    own_primary_branch(Node::V20, "shared");
}

#[test]
fn node20_an_apps_own_primary_branch_is_skipped_in_reuseport_mode() {
    own_primary_branch(Node::V20, "reuseport");
}

#[test]
fn node22_an_apps_own_primary_branch_is_skipped() {
    own_primary_branch(Node::V22, "reuseport");
}

/// An express app as it is written, `app.listen(PORT)`, answering with the worker it runs in.
const EXPRESS_APP: &str = r#"
const express = require('express');
const cluster = require('cluster');
const app = express();
app.get('/', (req, res) =>
  res.send(`id=${cluster.worker.id} pid=${process.pid} server=0 version=${process.version}\n`));
app.listen(Number(process.argv[2]));
"#;

/// `forkline run -w 2 -- node app.js` of an unmodified express app serves from both workers;
/// express from npm (the test deps), found through NODE_PATH.
fn express_app(mode: &str) {
    let node = Node::V20;
    let modules = test_deps().join("express/node_modules");
    assert!(
        modules.join("express/package.json").is_file(),
        "express is missing under {}: {SETUP}",
        modules.display()
    );
    let dir = TempDir::new(&format!("listen-express-{mode}"));
    let script = dir.write("app.js", EXPRESS_APP);
    let port = free_port();
    let node_path = format!("NODE_PATH={}", modules.display());
    let flags = vec!["-e", &node_path];
    let mut cluster = start(
        node,
        mode,
        dir.path(),
        &flags,
        &script,
        &[&port.to_string()],
    );
    let what = format!("express {mode}");
    both_answer(&cluster, node, &what, 0, || {
        get_tcp(SocketAddr::from(([127, 0, 0, 1], port)))
    });
    cluster.stop_cleanly();
}

#[test]
fn node20_an_express_app_serves_from_both_workers_in_shared_mode() {
    express_app("shared");
}

#[test]
fn node20_an_express_app_serves_from_both_workers_in_reuseport_mode() {
    express_app("reuseport");
}

/// `--listen unix:PATH` in reuseport mode, for a Node program without the channel
/// (`--ipc none`, `listen({fd: 3})`): a Unix socket has no SO_REUSEPORT, so every worker gets
/// the one socket (each slot's own bind found the path taken, and the second worker never
/// started), and both serve.
#[test]
fn node20_a_unix_listen_address_is_one_socket_for_plain_workers_in_reuseport_mode() {
    let dir = TempDir::new("listen-unix-plain");
    let path = dir.path().join("plain.sock");
    let script = dir.write("server.js", NODE_SERVER);
    let mut command = forkline();
    command
        .args([
            "run",
            "-w",
            "2",
            "--mode",
            "reuseport",
            "--ipc",
            "none",
            "-l",
        ])
        .arg(format!("unix:{}", path.display()))
        .arg("--")
        .arg(Node::V20.binary())
        .arg(&script);
    let mut cluster = Running::spawn(command);
    let mut ids = std::collections::BTreeSet::new();
    until(STARTUP, || {
        if let Ok(body) = get_unix(&path) {
            ids.extend(field(&body, "id").map(str::to_string));
        }
        (ids.len() == 2).then_some(())
    });
    assert_eq!(
        ids.iter().map(String::as_str).collect::<Vec<_>>(),
        ["0", "1"],
        "{}",
        cluster.output()
    );
    assert!(
        !cluster.output().contains("could not start worker"),
        "{}",
        cluster.output()
    );
    cluster.stop_cleanly();
}

/// Node's primary gives every worker's TLS server the first worker's ticket keys (the `data`
/// of its `queryServer`), so a session ticket one worker issued resumes on another: every
/// worker reports the same keys.
fn tls_ticket_keys_are_shared(node: Node, mode: &str) {
    let dir = TempDir::new(&format!("listen-tickets-{}-{mode}", node.major()));
    let (key, cert) = self_signed(&dir);
    let tls = free_port();
    let specs = json!([{"kind": "https", "port": tls, "key": key, "cert": cert}]);
    let mut cluster = start(
        node,
        mode,
        dir.path(),
        &[],
        Path::new(LISTEN_FORMS),
        &[&specs.to_string()],
    );
    let reports = reports(&cluster, 1);
    let keys = [0, 1].map(|id| reports[&(0, id)]["ticketKeys"].clone());
    assert!(keys[0].as_str().is_some_and(|k| k.len() == 96), "{keys:?}");
    assert_eq!(
        keys[0],
        keys[1],
        "Node {} {mode}: ticket keys differ",
        node.major()
    );
    cluster.stop_cleanly();
}

#[test]
fn node20_tls_ticket_keys_are_the_first_workers_in_shared_mode() {
    tls_ticket_keys_are_shared(Node::V20, "shared");
}

#[test]
fn node18_tls_ticket_keys_are_the_first_workers_in_reuseport_mode() {
    tls_ticket_keys_are_shared(Node::V18, "reuseport");
}

#[test]
fn node22_tls_ticket_keys_are_the_first_workers_in_steer_mode() {
    tls_ticket_keys_are_shared(Node::V22, "steer");
}

/// Steer mode as it starts by default (`--ready online`: a Node worker is ready before it
/// listens): each server's socket enters the steering array when the worker says it listens
/// on it, so an app with several servers is steered round-robin on every one.
#[test]
fn node20_steer_mode_takes_turns_on_every_server_of_an_app() {
    let node = Node::V20;
    let dir = TempDir::new("listen-steer-servers");
    let ports = [(); 4].map(|()| free_port());
    let specs = json!([
        {"kind": "http", "port": ports[0]},
        {"kind": "http", "port": ports[1]},
        {"kind": "http", "port": ports[2], "host": "127.0.0.1"},
        {"kind": "http", "port": ports[3]},
        {"kind": "http", "port": 0},
    ]);
    let mut cluster = start(
        node,
        "steer",
        dir.path(),
        &[],
        Path::new(LISTEN_FORMS),
        &[&specs.to_string()],
    );
    let reports = reports(&cluster, 5);
    let zero = listening(&reports, 4)[0]["port"].as_u64().unwrap() as u16;
    if !steering_with_bpf(&cluster) {
        return;
    }
    for port in ports.into_iter().chain([zero]) {
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        steered_evenly(&cluster, &format!("steered to {address}"), address);
    }
    cluster.stop_cleanly();
}
