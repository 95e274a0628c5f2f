//! A Rust worker built on the forkline library (`examples/rr_worker.rs`) under
//! `forkline run --mode round-robin`: the primary accepts on the `--listen` address and hands
//! each connection to a worker over the IPC channel.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::*;

/// `target/debug/examples/rr_worker`, which `cargo test` builds with the tests.
fn rr_worker() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/PROFILE/deps");
    let worker = profile_dir.join("examples").join("rr_worker");
    assert!(
        worker.is_file(),
        "{} is missing: build it with `cargo build -p forkline-cli --example rr_worker` \
         (plain `cargo test -p forkline-cli` builds it)",
        worker.display()
    );
    worker
}

#[test]
fn library_worker_in_round_robin_mode() {
    let port = free_port();
    let mut command = forkline();
    command.args(["run", "-w", "2", "--mode", "round-robin", "--name", "rr"]);
    command.arg("-l").arg(format!("127.0.0.1:{port}"));
    command.arg("--").arg(rr_worker());
    let mut cluster = Running::spawn(command);
    let mut answers = Vec::new();
    let ids = until(Duration::from_secs(30), || {
        if let Ok(line) = read_line_from(port) {
            answers.push(line);
        }
        let ids: BTreeSet<String> = answers
            .iter()
            .filter_map(|a| a.split_whitespace().nth(1).map(str::to_string))
            .collect();
        (ids.len() == 2).then_some(ids)
    });
    assert!(
        ids.is_some(),
        "answers so far: {answers:?}\n{}",
        cluster.output()
    );
    for answer in &answers {
        let words: Vec<&str> = answer.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{answer:?}");
        assert_eq!(words[0], "worker");
    }
    // The workers said where they listen, through the primary.
    let listening = cluster.stdout.wait_until(Duration::from_secs(5), |lines| {
        let n = lines
            .iter()
            .filter(|l| l.contains(&format!("listening on 127.0.0.1:{port} (round-robin)")))
            .count();
        (n == 2).then_some(())
    });
    assert!(listening.is_some(), "{}", cluster.output());
    assert!(
        !cluster.stderr.text().contains("hint: round-robin"),
        "a library worker was taken for a plain program\n{}",
        cluster.output()
    );
    cluster.stop_cleanly();
}
