//! `ops-server ADDR DELAY_MS WORKERS`: the seed example's round-robin cluster (the same
//! primary and worker as `crates/forkline/examples/cluster.rs`), with the operations features
//! switched by the environment, so that `bench/run.sh` can measure them on against off with
//! one binary:
//!
//! - `BENCH_METRICS=HOST:PORT` serves `/metrics`, `/healthz` and `/readyz` there;
//! - `BENCH_CONTROL=PATH` serves the control socket there.
//!
//! Built only with the `ops` feature (`cargo build --release -p forkline-loadgen --features
//! ops --bin ops-server`), so the load tools themselves do not depend on forkline.

use std::io::Write;
use std::time::Duration;

use forkline::{role, Cluster, Event, ListenSpec, Mode, Role};
use tokio::io::AsyncWriteExt;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8989".into());
    let delay_ms: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(10);
    match role() {
        Role::Primary => {
            let workers = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(2);
            std::process::exit(primary(&addr, workers));
        }
        Role::Worker(_) => {
            if let Err(e) = worker(&addr, Duration::from_millis(delay_ms)) {
                let _ = writeln!(std::io::stderr(), "worker-{}: {e}", std::process::id());
                std::process::exit(1);
            }
        }
    }
}

/// Runs the cluster until it stops; returns the exit code.
fn primary(addr: &str, workers: usize) -> i32 {
    let mut builder = Cluster::builder()
        .workers(workers)
        .mode(Mode::RoundRobin)
        .listen(ListenSpec::tcp(addr));
    if let Ok(address) = std::env::var("BENCH_METRICS") {
        builder = builder.metrics(address);
    }
    if let Ok(path) = std::env::var("BENCH_CONTROL") {
        builder = builder.control_socket(path);
    }
    let result = builder.run_blocking(|_, event| match event {
        Event::Online { worker } => say(format_args!("Create worker-{}", worker.pid())),
        Event::Exit {
            worker,
            code,
            signal,
            exited_after_disconnect: false,
            ..
        } => say(format_args!(
            "[Primary] worker {} died with code: {code:?}, and {signal:?}",
            worker.pid()
        )),
        _ => {}
    });
    match result {
        Ok(shutdown) => shutdown.exit_code(),
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "[Primary] {e}");
            1
        }
    }
}

/// One line on stdout, best effort.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

#[tokio::main(flavor = "current_thread")]
async fn worker(addr: &str, delay: Duration) -> forkline::Result<()> {
    let worker = forkline::worker::connect_async().await?;
    let listener = worker.listen_async(addr).await?;
    let reply: std::sync::Arc<str> =
        format!("Request handled by worker-{}\n", std::process::id()).into();
    let mut in_flight = tokio::task::JoinSet::new();
    while let Some((mut conn, _peer)) = listener.accept().await? {
        let reply = reply.clone();
        in_flight.spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let _ = conn.write_all(reply.as_bytes()).await;
        });
        while in_flight.try_join_next().is_some() {}
    }
    while in_flight.join_next().await.is_some() {}
    Ok(())
}
