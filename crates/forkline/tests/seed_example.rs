//! The seed example (`examples/cluster.rs`), run as a user would: its output, its answers, and
//! a killed worker's replacement.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{alive, eventually, fetch, free_port, SOON};

/// `target/<profile>/examples/cluster`, built by `cargo test` alongside the tests.
fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    profile_dir.join("examples").join(name)
}

#[test]
fn seed_example_serves_reports_and_replaces_workers() {
    let addr = format!("127.0.0.1:{}", free_port());
    let mut child = Command::new(example("cluster"))
        .args([addr.as_str(), "10", "2"])
        .env_remove("FORKLINE_WORKER_ID")
        .env_remove("FORKLINE_SCHED_POLICY")
        .stdout(Stdio::piped())
        .spawn()
        .expect("run the seed example");
    let (tx, lines) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next = |what: &str| -> String {
        lines
            .recv_timeout(SOON)
            .unwrap_or_else(|_| panic!("no line for {what}"))
    };
    let mut pids = Vec::new();
    for _ in 0..2 {
        let line = next("Create worker");
        let pid: u32 = line
            .strip_prefix("Create worker-")
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap();
        pids.push(pid);
    }
    // Answers come from both workers.
    let mut answered = std::collections::HashSet::new();
    assert!(eventually(SOON, || {
        if let Ok(reply) = fetch(&addr) {
            assert!(reply.starts_with("Request handled by worker-"), "{reply:?}");
            answered.insert(reply.trim().to_string());
        }
        answered.len() == 2
    }));
    // Kill one: the primary reports it like Node and forks a replacement.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let died = next("died");
    assert_eq!(
        died,
        format!(
            "[Primary] worker {} died with code: null, and SIGKILL",
            pids[0]
        )
    );
    let created = next("replacement");
    assert!(created.starts_with("Create worker-"), "{created:?}");
    // Graceful stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = (0..500)
        .find_map(|_| {
            std::thread::sleep(Duration::from_millis(20));
            child.try_wait().unwrap()
        })
        .expect("primary exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    assert!(eventually(SOON, || !alive(pids[1])));
}
