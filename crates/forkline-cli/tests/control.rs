//! The control commands against real `forkline run` clusters of a small Python server on
//! 127.0.0.1: `status` (table and `--json`), `ls`, `scale`, `restart`, `reload` (one that
//! succeeds and one whose new worker fails), `stop`, unknown names, bad scale values and a name
//! clash, and `logs` (recent lines, one slot, following). Each test has its own XDG_RUNTIME_DIR, so tests never see each other's clusters.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

const STARTUP: Duration = Duration::from_secs(30);

/// A server on the shared socket (fd 3) that says who it is, ready (sd_notify) once it serves;
/// it exits 1 at start, never ready, when the file named by its first argument exists.
const SERVER: &str = r#"
import os, signal, socket, sys
if len(sys.argv) > 1 and os.path.exists(sys.argv[1]):
    sys.exit(1)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
s = socket.socket(fileno=3)
addr = os.environ["NOTIFY_SOCKET"]
if addr.startswith("@"):
    addr = "\0" + addr[1:]
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"READY=1", addr)
print(f"serving pid={os.getpid()}", flush=True)
while True:
    c, _ = s.accept()
    print(f"answered pid={os.getpid()}", flush=True)
    c.sendall(f"pid={os.getpid()} id={os.environ['FORKLINE_WORKER_ID']}\n".encode())
    c.close()
"#;

/// A test's private world: its runtime directory and the server program.
struct World {
    dir: TempDir,
    server: PathBuf,
    marker: PathBuf,
}

impl World {
    fn new(tag: &str) -> World {
        require("python3");
        let dir = TempDir::new(&format!("control-{tag}"));
        let server = dir.write("server.py", SERVER);
        let marker = dir.path().join("fail-at-start");
        World {
            dir,
            server,
            marker,
        }
    }

    /// `forkline` with this world's XDG_RUNTIME_DIR.
    fn forkline(&self) -> Command {
        let mut command = forkline();
        command.env("XDG_RUNTIME_DIR", self.dir.path());
        command
    }

    /// The socket directory.
    fn sockets(&self) -> PathBuf {
        self.dir.path().join("forkline")
    }

    /// Starts a cluster named `name` with `workers` workers and waits until all are ready.
    fn start(&self, name: &str, workers: usize) -> Running {
        let cluster = Running::spawn(self.run_command(name, workers));
        let ready = until(STARTUP, || {
            let status = self.try_status(name)?;
            (status["ready"] == workers).then_some(())
        });
        assert!(
            ready.is_some(),
            "cluster {name} not ready\n{}",
            cluster.output()
        );
        cluster
    }

    fn run_command(&self, name: &str, workers: usize) -> Command {
        self.run_command_with(name, workers, &[])
    }

    /// `run_command` with more `forkline run` options.
    fn run_command_with(&self, name: &str, workers: usize, extra: &[&str]) -> Command {
        let mut command = self.forkline();
        command.args(["run", "--name", name, "-w", &workers.to_string()]);
        command.args(extra);
        command.args(["--ready", "notify", "--settle-time", "200ms"]);
        command.arg("-l").arg(format!("127.0.0.1:{}", free_port()));
        command
            .arg("--")
            .arg("python3")
            .arg(&self.server)
            .arg(&self.marker);
        command
    }

    /// Runs `forkline ARGS...` to its end.
    fn ctl(&self, args: &[&str]) -> Finished {
        let mut command = self.forkline();
        command.args(args);
        run_to_end(command, Duration::from_secs(60))
    }

    /// `forkline status NAME --json`, if it answers.
    fn try_status(&self, name: &str) -> Option<Value> {
        let out = self.ctl(&["status", name, "--json"]);
        (out.code == Some(0)).then(|| serde_json::from_str(&out.stdout).expect("JSON status"))
    }

    fn status(&self, name: &str) -> Value {
        self.try_status(name).expect("status answers")
    }

    /// Waits until `check` holds for the cluster's status.
    fn wait_status(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        until(STARTUP, || self.try_status(name).filter(&check))
            .unwrap_or_else(|| panic!("{what}: last status {:?}", self.try_status(name)))
    }
}

/// The pids of the workers in a status object, by slot.
fn pids(status: &Value) -> Vec<(u64, u64)> {
    status["workers"]
        .as_array()
        .expect("workers list")
        .iter()
        .filter_map(|w| Some((w["slot"].as_u64()?, w["pid"].as_u64()?)))
        .collect()
}

/// One line on stderr.
fn one_line(out: &Finished) -> &str {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one line on stderr: {:?}",
        out.stderr
    );
    lines[0]
}

#[test]
fn status_as_a_table_and_as_json() {
    let world = World::new("status");
    let mut cluster = world.start("web", 2);

    let json = world.status("web");
    assert_eq!(json["name"], "web");
    assert_eq!(json["pid"], cluster.pid());
    assert!(json.get("ok").is_none(), "{json}");
    let workers = pids(&json);
    assert_eq!(
        workers.iter().map(|w| w.0).collect::<Vec<_>>(),
        vec![0, 1],
        "{json}"
    );
    let children = children_of(cluster.pid());
    for (_, pid) in &workers {
        assert!(
            children.contains(&(*pid as u32)),
            "{pid} not in {children:?}"
        );
    }

    let table = world.ctl(&["status", "web"]);
    assert_eq!(table.code, Some(0), "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("web: primary pid {}", cluster.pid())),
        "{}",
        table.stdout
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "SLOT",
            "PID",
            "STATE",
            "UPTIME",
            "RESTARTS",
            "IN-FLIGHT",
            "SERVED",
            "RSS",
            "CPU"
        ]
    );
    for (slot, pid) in &workers {
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(&slot.to_string()))
            .unwrap_or_else(|| panic!("no row for slot {slot}: {}", table.stdout));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], pid.to_string(), "{row}");
        assert_eq!(cells[2], "ready", "{row}");
    }
    cluster.stop_cleanly();
}

#[test]
fn ls_lists_live_clusters_and_skips_stale_sockets() {
    let world = World::new("ls");
    let empty = world.ctl(&["ls"]);
    assert_eq!(empty.code, Some(0), "{}", empty.stderr);
    assert!(
        empty.stdout.contains("no cluster is running"),
        "{}",
        empty.stdout
    );

    let mut api = world.start("api", 1);
    let mut web = world.start("web", 2);
    // A socket file nobody serves any more, as a killed primary leaves it.
    drop(std::os::unix::net::UnixListener::bind(world.sockets().join("ghost.sock")).unwrap());

    let out = world.ctl(&["ls"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let rows: Vec<Vec<&str>> = out
        .stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["NAME", "PID", "READY", "UPTIME", "MODE", "ADDRESSES"]
    );
    assert_eq!(rows.len(), 3, "{}", out.stdout);
    assert_eq!(rows[1][..3], ["api", &api.pid().to_string(), "1/1"]);
    assert_eq!(rows[2][..3], ["web", &web.pid().to_string(), "2/2"]);
    assert_eq!(rows[2][4], "shared");
    assert!(rows[2][5].starts_with("127.0.0.1:"), "{}", out.stdout);
    api.stop_cleanly();
    web.stop_cleanly();
}

#[test]
fn scale_up_and_down_then_restart_a_slot() {
    let world = World::new("scale");
    let mut cluster = world.start("web", 1);

    let up = world.ctl(&["scale", "web", "+1"]);
    assert_eq!(up.code, Some(0), "{}", up.stderr);
    assert!(up.stdout.contains("2 workers"), "{}", up.stdout);
    let status = world.wait_status("web", "two workers ready", |s| {
        s["target"] == 2 && s["ready"] == 2 && pids(s).len() == 2
    });
    let slot0 = pids(&status)[0];

    let down = world.ctl(&["scale", "web", "-1"]);
    assert_eq!(down.code, Some(0), "{}", down.stderr);
    world.wait_status("web", "one worker left", |s| {
        s["target"] == 1 && pids(s).len() == 1
    });

    let restart = world.ctl(&["restart", "web", "0"]);
    assert_eq!(restart.code, Some(0), "{}", restart.stderr);
    assert!(
        restart.stdout.contains("slot 0 restarted"),
        "{}",
        restart.stdout
    );
    let status = world.wait_status("web", "slot 0 replaced", |s| {
        pids(s).len() == 1 && s["ready"] == 1
    });
    assert_ne!(pids(&status)[0], slot0, "{status}");

    let missing = world.ctl(&["restart", "web", "5"]);
    assert_eq!(missing.code, Some(1));
    assert!(one_line(&missing).contains("slot 5"), "{}", missing.stderr);
    cluster.stop_cleanly();
}

#[test]
fn reload_succeeds_then_fails_naming_the_slot() {
    let world = World::new("reload");
    let mut cluster = world.start("web", 2);
    let before = pids(&world.status("web"));

    let ok = world.ctl(&["reload", "web"]);
    assert_eq!(ok.code, Some(0), "{}", ok.stderr);
    assert!(ok.stdout.contains("reloaded"), "{}", ok.stdout);
    let after = pids(&world.status("web"));
    assert_eq!(after.len(), 2);
    for (old, new) in before.iter().zip(&after) {
        assert_ne!(old.1, new.1, "slot {} was not replaced", old.0);
    }

    std::fs::write(&world.marker, "").unwrap();
    let failed = world.ctl(&["reload", "web"]);
    assert_eq!(failed.code, Some(1), "{}", failed.stdout);
    let line = one_line(&failed);
    assert!(line.contains("reload failed at slot 0"), "{line}");
    assert!(line.contains("exited with code 1"), "{line}");
    // The old workers keep serving.
    let status = world.status("web");
    assert_eq!(status["ready"], 2, "{status}");
    assert_eq!(pids(&status), after);
    cluster.stop_cleanly();
}

#[test]
fn stop_gracefully_and_now() {
    let world = World::new("stop");
    let mut graceful = world.start("a", 1);
    let mut now = world.start("b", 1);

    let out = world.ctl(&["stop", "a"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("a: stopped"), "{}", out.stdout);
    let status = graceful
        .wait_exit(Duration::from_secs(20))
        .expect("a stops");
    assert_eq!(status.code(), Some(0), "{}", graceful.output());
    assert!(!world.sockets().join("a.sock").exists());

    let out = world.ctl(&["stop", "b", "--now"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    now.wait_exit(Duration::from_secs(20)).expect("b stops");
}

#[test]
fn an_unknown_name_lists_the_live_clusters() {
    let world = World::new("unknown");
    let out = world.ctl(&["status", "nope"]);
    assert_eq!(out.code, Some(1));
    assert!(one_line(&out).contains("none is running"), "{}", out.stderr);

    let mut cluster = world.start("web", 1);
    for args in [
        &["status", "nope"][..],
        &["reload", "nope"],
        &["stop", "nope"],
    ] {
        let out = world.ctl(args);
        assert_eq!(out.code, Some(1), "{args:?}");
        let line = one_line(&out);
        assert!(line.contains("no cluster named `nope`"), "{line}");
        assert!(line.contains("running: web"), "{line}");
    }
    cluster.stop_cleanly();
}

#[test]
fn bad_scale_values_are_usage_errors() {
    let world = World::new("bad-scale");
    for count in ["0", "abc", "+0", "-x", "1.5"] {
        let out = world.ctl(&["scale", "web", count]);
        assert_eq!(out.code, Some(2), "scale {count}: {}", out.stderr);
        assert!(one_line(&out).contains("scale"), "{}", out.stderr);
    }
    let out = world.ctl(&["scale", "web"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    one_line(&out);
    let out = world.ctl(&["restart", "web", "x"]);
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    one_line(&out);
}

#[test]
fn a_second_cluster_with_the_same_name_is_refused() {
    let world = World::new("clash");
    let mut first = world.start("same", 1);
    let second = run_to_end(world.run_command("same", 1), Duration::from_secs(30));
    assert_eq!(second.code, Some(1), "{}", second.stderr);
    let socket = world.sockets().join("same.sock");
    let line = second
        .stderr
        .lines()
        .find(|l| l.starts_with("forkline: error:"))
        .unwrap_or_else(|| panic!("no error line: {}", second.stderr));
    assert!(line.contains("`same` is already running"), "{line}");
    assert!(line.contains(&socket.display().to_string()), "{line}");
    // The first one is untouched.
    assert_eq!(world.status("same")["pid"], first.pid());
    first.stop_cleanly();
}

#[test]
fn the_control_socket_is_logged_and_shown_by_check_config() {
    let world = World::new("where");
    let cluster = world.start("web", 1);
    let socket = world.sockets().join("web.sock");
    let logged = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("control socket:"));
    assert!(
        logged.is_some_and(|l| l.contains(&socket.display().to_string())),
        "{}",
        cluster.output()
    );
    drop(cluster);

    let config = world
        .dir
        .write("forkline.toml", "command = [\"python3\"]\n");
    let out = world.ctl(&["check-config", config.to_str().unwrap()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let default = world.sockets().join("python3.sock");
    assert!(
        out.stdout
            .contains(&format!("control = \"{}\"", default.display())),
        "{}",
        out.stdout
    );

    let mut command = world.forkline();
    command.env("FORKLINE_CONTROL", "/tmp/elsewhere.sock");
    command.args(["check-config", config.to_str().unwrap()]);
    let out = run_to_end(command, Duration::from_secs(30));
    assert!(
        out.stdout.contains("control = \"/tmp/elsewhere.sock\""),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("env FORKLINE_CONTROL"),
        "{}",
        out.stdout
    );
}

#[test]
fn control_path_given_explicitly() {
    let world = World::new("explicit");
    let socket = world.dir.path().join("my.sock");
    let mut command = world.run_command("web", 1);
    command.env("FORKLINE_CONTROL", &socket);
    let mut cluster = Running::spawn(command);
    let path = socket.to_str().unwrap();
    let ready = until(STARTUP, || {
        let out = world.ctl(&["status", "--control", path, "--json"]);
        let status: Value = serde_json::from_str(&out.stdout).ok()?;
        (status["ready"] == 1).then_some(())
    });
    assert!(ready.is_some(), "{}", cluster.output());
    let out = world.ctl(&["scale", "--control", path, "2"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let out = world.ctl(&["stop", "--control", path]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    cluster.wait_exit(Duration::from_secs(20)).expect("stops");
    let out = world.ctl(&["status", "--control", path]);
    assert_eq!(out.code, Some(1));
    assert!(
        one_line(&out).contains("no cluster serves"),
        "{}",
        out.stderr
    );
}

/// Another user's cluster: the client is told permission was denied (exit 1). Needs root, to
/// run the client as `nobody`; skipped otherwise.
#[test]
fn another_users_cluster_is_permission_denied() {
    use std::os::unix::process::CommandExt;
    if !nix::unistd::Uid::effective().is_root() {
        return;
    }
    let world = World::new("denied");
    let mut cluster = world.start("web", 1);
    let mut command = world.forkline();
    command.uid(65534).gid(65534);
    command.args(["status", "web"]);
    let out = run_to_end(command, Duration::from_secs(30));
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = one_line(&out);
    assert!(line.contains("permission denied"), "{line}");
    assert!(line.contains("another user"), "{line}");
    cluster.stop_cleanly();
}

/// `--metrics ADDR` serves Prometheus text and the probes from `forkline run`.
#[test]
fn metrics_flag_serves_metrics_and_probes() {
    use std::io::{Read, Write};
    let world = World::new("metrics");
    // Port 0, and the port bound read from the log: a port picked free beforehand may be
    // taken (by any client's connect) before the cluster binds it, and it would not start.
    let cluster =
        Running::spawn(world.run_command_with("measured", 2, &["--metrics", "127.0.0.1:0"]));
    let logged = cluster
        .stderr
        .wait_for(STARTUP, |l| l.contains("metrics at /metrics"))
        .unwrap_or_else(|| panic!("no metrics address logged\n{}", cluster.output()));
    let metrics = logged
        .rsplit_once("address=")
        .map(|(_, a)| a.trim().to_string())
        .expect("address=HOST:PORT");
    assert!(
        !metrics.ends_with(":0"),
        "the bound port is logged: {logged}"
    );
    let get = |path: &str| -> Option<(u16, String)> {
        let mut stream = std::net::TcpStream::connect(&metrics).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        let code = response.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, response))
    };
    let ready = until(STARTUP, || get("/readyz").filter(|(code, _)| *code == 200));
    assert!(
        ready.is_some(),
        "/readyz never said ready\n{}",
        cluster.output()
    );
    assert_eq!(get("/healthz").map(|r| r.0), Some(200));
    // /readyz says ready with one worker ready; wait for both.
    let both = until(STARTUP, || {
        get("/metrics").filter(|(code, text)| {
            *code == 200 && text.contains("forkline_workers{state=\"ready\"} 2")
        })
    });
    assert!(both.is_some(), "{:?}", get("/metrics"));
}

/// True for `TIME [NAME:SLOT PID] TEXT` with an RFC 3339 UTC time.
fn stamped(line: &str, name: &str, text: &str) -> bool {
    let Some((time, rest)) = line.split_once(' ') else {
        return false;
    };
    time.len() == "2026-11-30T06:00:00.000000Z".len()
        && time.ends_with('Z')
        && time.as_bytes()[10] == b'T'
        && rest.starts_with(&format!("[{name}:"))
        && rest.ends_with(text)
}

#[test]
fn logs_prints_recent_worker_lines_then_follows() {
    let world = World::new("logs");
    let mut cluster = world.start("logs", 2);
    let status = world.status("logs");
    let pids = pids(&status);
    let port: u16 = status["addresses"][0]
        .as_str()
        .and_then(|a| a.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a TCP address in status");

    // Every worker's first line is in the buffer, stamped and attributed.
    let recent = until(STARTUP, || {
        let out = world.ctl(&["logs", "logs"]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
        pids.iter()
            .all(|(_, pid)| out.stdout.contains(&format!("serving pid={pid}")))
            .then_some(out.stdout)
    })
    .expect("both workers' first lines in forkline logs");
    for line in recent.lines() {
        assert!(
            stamped(line, "logs", ""),
            "not TIME [logs:SLOT PID]: {line}"
        );
    }
    // The primary's own output carries the same lines, stamped too.
    let written = cluster.stdout.text();
    assert!(
        written
            .lines()
            .any(|l| stamped(l, "logs", &format!("serving pid={}", pids[0].1))),
        "{written}"
    );

    // One slot only.
    let (slot, pid) = pids[1];
    let one = world.ctl(&["logs", "logs", "--slot", &slot.to_string(), "--json"]);
    assert_eq!(one.code, Some(0), "{}", one.stderr);
    let lines: Vec<Value> = one
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines.iter().all(|l| l["slot"] == slot && l["pid"] == pid),
        "{lines:?}"
    );

    // Following: a connection made now shows up in the follower.
    let mut follow = world.forkline();
    follow.args(["logs", "logs", "-f", "-n", "0"]);
    let mut follower = Running::spawn(follow);
    let seen = until(STARTUP, || {
        let _ = read_line_from(port);
        follower
            .stdout
            .text()
            .contains("answered pid=")
            .then_some(())
    });
    assert!(
        seen.is_some(),
        "follower saw no new line\n{}",
        follower.output()
    );
    assert!(
        !follower.stdout.text().contains("serving pid="),
        "-n 0 printed old lines"
    );

    // The follower ends, exit 0, when the cluster stops.
    cluster.stop_cleanly();
    let ended = follower.wait_exit(Duration::from_secs(20));
    assert_eq!(
        ended.and_then(|s| s.code()),
        Some(0),
        "{}",
        follower.output()
    );
}

#[test]
fn a_metrics_address_in_use_is_named() {
    let world = World::new("metrics-in-use");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let out = run_to_end(
        world.run_command_with("busy", 1, &["--metrics", &address]),
        STARTUP,
    );
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = one_line(&out);
    assert!(
        line.contains(&format!("cannot serve --metrics on {address}")) && line.contains("in use"),
        "{line}"
    );
}
