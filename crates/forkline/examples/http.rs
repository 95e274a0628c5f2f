//! An axum hello-world, clustered in round-robin mode: the primary accepts and hands each
//! connection to a worker, and every worker serves HTTP/1.1 (keep-alive) with axum.
//!
//! Usage: `cargo run --release --example http -- [ADDR] [WORKERS]` (defaults `127.0.0.1:8080`,
//! cores). SIGTERM or Ctrl-C stops it gracefully: workers finish in-flight requests.

use axum::routing::get;
use axum::Router;
use forkline::{role, Cluster, Role};

fn main() -> forkline::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    match role() {
        Role::Primary => {
            let workers = args
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            let done = Cluster::builder()
                .workers(workers)
                .run_blocking(|_, event| {
                    if let forkline::Event::Listening { worker, address } = event {
                        println!(
                            "worker {} (pid {}) serving http://{address}/",
                            worker.id(),
                            worker.pid()
                        );
                    }
                })?;
            std::process::exit(done.exit_code());
        }
        Role::Worker(id) => serve(&addr, id),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn serve(addr: &str, id: usize) -> forkline::Result<()> {
    let worker = forkline::worker::connect_async().await?;
    let listener = worker.listen_async(addr).await?;
    let pid = std::process::id();
    let app = Router::new().route(
        "/",
        get(move || async move { format!("Hello from worker {id} (pid {pid})\n") }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { worker.disconnected().await })
        .await?;
    Ok(())
}
