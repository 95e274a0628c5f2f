//! Programs that know nothing of forkline, run under `forkline run` on 127.0.0.1: a Node
//! server on `{fd: 3}` in shared and reuseport modes, Python's `http.server` in proxy mode,
//! worker replacement after SIGKILL, recycling with `--max-requests`, log prefixes, and the
//! primary's exit when nothing is left to run.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const STARTUP: Duration = Duration::from_secs(30);

/// Node's `server.listen({fd: 3})` gets the shared socket; every worker answers, each with its
/// own pid in `LISTEN_PID` and the cluster's port in `PORT`.
fn node_on_fd3(mode: &str) {
    require("node");
    let dir = TempDir::new(&format!("node-{mode}"));
    let server = dir.write("server.js", NODE_SERVER);
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "2", "--mode", mode, "-l"]);
    command.arg(format!("127.0.0.1:{port}"));
    command.arg("--").arg("node").arg(&server);
    let mut cluster = Running::spawn(command);
    let bodies = answers_from_workers(port, 2, STARTUP);
    for body in &bodies {
        assert_eq!(field(body, "listen_pid"), field(body, "pid"), "{body}");
        assert_eq!(field(body, "listen_fds"), Some("1"), "{body}");
        assert_eq!(
            field(body, "port"),
            Some(port.to_string().as_str()),
            "{body}"
        );
        // The address, with systemd's forbidden `:` replaced.
        assert_eq!(
            field(body, "names"),
            Some(format!("127.0.0.1_{port}").as_str()),
            "{body}"
        );
    }
    let ids: BTreeSet<&str> = bodies.iter().filter_map(|b| field(b, "id")).collect();
    assert_eq!(ids, BTreeSet::from(["0", "1"]));
    cluster.stop_cleanly();
}

#[test]
fn node_on_fd3_in_shared_mode() {
    node_on_fd3("shared");
}

#[test]
fn node_on_fd3_in_reuseport_mode() {
    node_on_fd3("reuseport");
}

/// Python's unmodified `http.server $PORT` in proxy mode: each worker listens on its own
/// loopback port, the primary relays; both workers serve, and their request logs come out
/// prefixed `[python3:ID PID]`.
#[test]
fn python_http_server_in_proxy_mode() {
    require("python3");
    let dir = TempDir::new("python-proxy");
    dir.write("index.html", "hello from python\n");
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "2", "--mode", "proxy", "--ready", "listen"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command
        .arg("--name")
        .arg("python3")
        .arg("--cwd")
        .arg(dir.path());
    command.args([
        "--",
        "sh",
        "-c",
        r#"exec python3 -m http.server "$PORT" --bind 127.0.0.1"#,
    ]);
    let mut cluster = Running::spawn(command);
    // http.server logs every request on stderr: wait until both workers have logged one.
    let served_by_both = until(STARTUP, || {
        if let Ok(response) = http_get(port) {
            assert_eq!(response.status, 200);
            assert_eq!(response.body, "hello from python\n");
        }
        let ids: BTreeSet<String> = cluster
            .stderr
            .all()
            .iter()
            .filter(|l| l.contains("\"GET / HTTP/1.0\" 200"))
            .filter_map(|l| unstamped(l).strip_prefix("[python3:"))
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    assert!(served_by_both.is_some(), "{}", cluster.output());
    // Each worker had its own PORT, not the public one.
    let ports: BTreeSet<String> = cluster
        .stdout
        .all()
        .iter()
        .filter_map(|l| l.split("port ").nth(1))
        .filter_map(|rest| rest.split(' ').next().map(str::to_string))
        .collect();
    assert_eq!(ports.len(), 2, "{}", cluster.output());
    assert!(!ports.contains(&port.to_string()), "{ports:?}");
    cluster.stop_cleanly();
}

/// A worker killed with SIGKILL is replaced in the same slot (same FORKLINE_WORKER_ID, new pid)
/// and the cluster keeps answering.
#[test]
fn a_worker_killed_with_sigkill_is_replaced() {
    require("node");
    let dir = TempDir::new("sigkill");
    let server = dir.write("server.js", NODE_SERVER);
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "2", "--mode", "shared", "-l"]);
    command.arg(format!("127.0.0.1:{port}"));
    command.arg("--").arg("node").arg(&server);
    let mut cluster = Running::spawn(command);
    let bodies = answers_from_workers(port, 2, STARTUP);
    let victim = &bodies[0];
    let victim_pid: u32 = field(victim, "pid").unwrap().parse().unwrap();
    let victim_id = field(victim, "id").unwrap().to_string();
    kill(Pid::from_raw(victim_pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        until(Duration::from_secs(10), || (!alive(victim_pid))
            .then_some(()))
        .is_some(),
        "the killed worker was not reaped"
    );
    let replacement = until(STARTUP, || {
        let response = http_get(port).ok()?;
        let pid: u32 = field(&response.body, "pid")?.parse().ok()?;
        (pid != victim_pid && field(&response.body, "id") == Some(victim_id.as_str()))
            .then_some(pid)
    });
    assert!(
        replacement.is_some(),
        "no replacement for worker {victim_id}\n{}",
        cluster.output()
    );
    cluster.stop_cleanly();
}

/// `--max-requests 3` recycles each worker after about three connections: new pids keep
/// appearing, the old ones exit, and requests keep being answered.
#[test]
fn max_requests_recycles_workers() {
    require("node");
    let dir = TempDir::new("max-requests");
    let server = dir.write("server.js", NODE_SERVER);
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "2", "--mode", "proxy", "--ready", "listen"]);
    command.args(["--max-requests", "3", "-l"]);
    command.arg(format!("127.0.0.1:{port}"));
    command.arg("--").arg("node").arg(&server);
    let mut cluster = Running::spawn(command);
    let mut pids = BTreeSet::new();
    let mut answered = 0;
    let recycled = until(Duration::from_secs(60), || {
        if let Ok(response) = http_get(port) {
            if response.status == 200 {
                answered += 1;
                pids.insert(field(&response.body, "pid")?.to_string());
            }
        }
        (pids.len() >= 4).then_some(())
    });
    assert!(
        recycled.is_some(),
        "expected at least 4 different worker pids with --max-requests 3 across 2 workers; \
         saw {pids:?} in {answered} answers\n{}",
        cluster.output()
    );
    let retired = until(Duration::from_secs(30), || {
        let gone = pids.iter().filter(|p| !alive(p.parse().unwrap())).count();
        (gone >= 2).then_some(())
    });
    assert!(
        retired.is_some(),
        "recycled workers did not exit\n{}",
        cluster.output()
    );
    cluster.stop_cleanly();
}

/// Each line of worker output is stamped, prefixed `[NAME:ID PID]` and written whole: long lines from
/// two busy workers never interleave.
#[test]
fn worker_output_is_prefixed_line_by_line() {
    require("python3");
    let script = "import os, sys\n\
        wid = os.environ['FORKLINE_WORKER_ID']\n\
        for i in range(300):\n\
        \x20   sys.stdout.write(wid * 3000 + '\\n')\n\
        sys.stdout.flush()\n\
        print('err from', wid, file=sys.stderr)\n";
    let dir = TempDir::new("prefix");
    let program = dir.write("chatty.py", script);
    let mut command = forkline();
    command.args(["run", "-w", "2", "--restart", "never", "--name", "demo"]);
    command.arg("--").arg("python3").arg(&program);
    let finished = run_to_end(command, Duration::from_secs(60));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let lines: Vec<&str> = finished.stdout.lines().collect();
    assert_eq!(lines.len(), 600, "{}", finished.stderr);
    for line in &lines {
        assert_ne!(unstamped(line), *line, "no timestamp first: {line}");
        let (prefix, body) = unstamped(line).split_once("] ").expect("prefixed line");
        let mut words = prefix.trim_start_matches('[').split(' ');
        let name_id = words.next().unwrap();
        let pid = words.next().unwrap();
        assert!(pid.parse::<u32>().is_ok(), "{prefix}");
        let id = name_id.strip_prefix("demo:").expect("named prefix");
        assert_eq!(body, id.repeat(3000), "a line was cut or interleaved");
    }
    for id in ["0", "1"] {
        assert!(
            finished
                .stderr
                .lines()
                .any(|l| unstamped(l).starts_with(&format!("[demo:{id} "))
                    && l.ends_with(&format!("] err from {id}"))),
            "{}",
            finished.stderr
        );
    }
}

/// `--no-log-prefix` passes output through untouched; `--env` and `--cwd` reach the worker.
#[test]
fn no_log_prefix_env_and_cwd() {
    let dir = TempDir::new("plain-output");
    let mut command = forkline();
    command.args(["run", "-w", "1", "--restart", "never", "--no-log-prefix"]);
    command.args(["--env", "GREETING=hello there", "--cwd"]);
    command.arg(dir.path());
    command.args([
        "--",
        "sh",
        "-c",
        r#"echo "$GREETING from $(pwd) as $FORKLINE_WORKER_ID""#,
    ]);
    let finished = run_to_end(command, Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let expected = format!("hello there from {} as 0", dir.path().display());
    assert_eq!(finished.stdout.trim(), expected, "{}", finished.stderr);
}

/// With `--restart never` the primary stops once every worker has exited: 0 when they all
/// succeeded, 1 when one failed.
#[test]
fn exit_code_when_nothing_is_left_to_run() {
    let mut ok = forkline();
    ok.args(["run", "-w", "2", "--restart", "never", "--", "true"]);
    let finished = run_to_end(ok, Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);

    let mut failing = forkline();
    failing.args([
        "run",
        "-w",
        "2",
        "--restart",
        "on-failure",
        "--max-restarts",
        "1",
    ]);
    failing.args(["--", "sh", "-c", "exit 3"]);
    let finished = run_to_end(failing, Duration::from_secs(30));
    assert_eq!(finished.code, Some(1), "{}", finished.stderr);
}

/// `--user nobody` runs workers as that user (needs root; skipped otherwise).
#[test]
fn user_switch() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: --user needs root");
        return;
    }
    let mut command = forkline();
    command.args(["run", "-w", "1", "--restart", "never", "--user", "nobody"]);
    command.args(["--cwd", "/", "--", "id", "-u"]);
    let finished = run_to_end(command, Duration::from_secs(30));
    assert_eq!(finished.code, Some(0), "{}", finished.stderr);
    let uid = nix::unistd::User::from_name("nobody")
        .unwrap()
        .expect("user nobody")
        .uid;
    assert!(
        finished.stdout.trim().ends_with(&format!("] {uid}")),
        "{}",
        finished.stdout
    );
}
