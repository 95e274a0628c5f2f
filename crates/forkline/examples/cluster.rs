//! The seed example: a faithful port of the Node.js cluster program forkline started from.
//!
//! The primary forks one worker per core, prints `Create worker-PID` when each comes online,
//! and on every exit prints `[Primary] worker PID died with code: C, and SIGNAL` and forks a
//! replacement. Each worker serves TCP: DELAY_MS after a connection arrives it writes
//! `Request handled by worker-PID` and closes.
//!
//! Usage: `cargo run --release --example cluster -- [ADDR] [DELAY_MS] [WORKERS]`
//! (defaults `127.0.0.1:8989`, `10`, cores). `FORKLINE_SCHED_POLICY=rr|none|reuseport` picks
//! the distribution mode.

use std::time::Duration;

use forkline::{role, Cluster, Event, RestartPolicy, Role};
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
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "warn".into()),
                )
                .with_writer(std::io::stderr)
                .init();
            let workers = args
                .get(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            std::process::exit(primary(workers));
        }
        Role::Worker(_) => {
            if let Err(e) = worker(&addr, Duration::from_millis(delay_ms)) {
                eprintln!("worker-{}: {e}", std::process::id());
                std::process::exit(1);
            }
        }
    }
}

fn primary(workers: usize) -> i32 {
    let result = Cluster::builder()
        .workers(workers)
        // Like Node: the exit handler below forks the replacement.
        .restart(RestartPolicy::Never)
        .run_blocking(|cluster, event| match event {
            Event::Online { worker } => println!("Create worker-{}", worker.pid()),
            Event::Exit {
                worker,
                code,
                signal,
                ..
            } => {
                let code = code.map_or("null".to_string(), |c| c.to_string());
                let signal = signal.map_or("null".to_string(), signal_name);
                println!(
                    "[Primary] worker {} died with code: {code}, and {signal}",
                    worker.pid()
                );
                if !cluster.is_stopping() {
                    let _ = cluster.fork();
                }
            }
            _ => {}
        });
    match result {
        Ok(shutdown) => shutdown.exit_code(),
        Err(e) => {
            eprintln!("[Primary] {e}");
            1
        }
    }
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| signal.to_string())
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
            // Dropping the connection closes it, which sends the FIN (Node's `socket.end`).
            let _ = conn.write_all(reply.as_bytes()).await;
        });
        // Reap finished tasks so the set does not grow.
        while in_flight.try_join_next().is_some() {}
    }
    // Disconnected: finish what was accepted, then exit.
    while in_flight.join_next().await.is_some() {}
    Ok(())
}
