//! The seed example: a port of the Node.js cluster program forkline started from.
//!
//! The primary forks one worker per core, prints `Create worker-PID` when each comes online,
//! and on every exit prints `[Primary] worker PID died with code: C, and SIGNAL`. Like a Node
//! primary that checks `worker.exitedAfterDisconnect`, it forks a replacement only for a worker
//! that died unexpectedly: one stopped on purpose (a rolling reload on SIGHUP, one worker less
//! on SIGTTOU, the shutdown on SIGINT/SIGTERM) is not replaced. Each worker serves TCP:
//! DELAY_MS after a connection arrives it writes `Request handled by worker-PID` and closes.
//!
//! Unlike Node's program, the primary binds the address itself before it forks: a port that
//! cannot be bound ends the example with exit code 1 and one line naming the address, instead
//! of workers that fail to listen and are forked again, forever. In round-robin mode the
//! primary accepts on that socket; in the other modes each worker's `listen` gets it (or, in
//! reuseport mode, its own socket on the same port) from the primary.
//!
//! Usage: `cargo run --release --example cluster -- [ADDR] [DELAY_MS] [WORKERS]`
//! (defaults `127.0.0.1:8989`, `10`, cores). `FORKLINE_SCHED_POLICY=rr|none|reuseport|steer` picks
//! the distribution mode.

use std::io::Write;
use std::time::Duration;

use forkline::{role, Cluster, Event, ListenSpec, RestartPolicy, Role};
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
                // Colours on a terminal only: no escape codes in a redirected log.
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                // A log line that cannot be written is dropped, not reported with a panic.
                .log_internal_errors(false)
                .init();
            let workers = args
                .get(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
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
    let result = Cluster::builder()
        .workers(workers)
        // Like Node: the exit handler below forks the replacements.
        .restart(RestartPolicy::Never)
        // Bound here, once: if the port is taken, `run_blocking` fails before any fork.
        .listen(ListenSpec::tcp(addr))
        .run_blocking(|cluster, event| match event {
            Event::Online { worker } => say(format_args!("Create worker-{}", worker.pid())),
            Event::Exit {
                worker,
                code,
                signal,
                exited_after_disconnect,
                ..
            } => {
                let code = code.map_or("null".to_string(), |c| c.to_string());
                let signal = signal.map_or("null".to_string(), signal_name);
                say(format_args!(
                    "[Primary] worker {} died with code: {code}, and {signal}",
                    worker.pid()
                ));
                // Node: `if (!worker.exitedAfterDisconnect) cluster.fork()`.
                if !exited_after_disconnect && !cluster.is_stopping() {
                    let _ = cluster.fork();
                }
            }
            _ => {}
        });
    match result {
        Ok(shutdown) => shutdown.exit_code(),
        Err(forkline::Error::Listen { address, source }) => {
            shout(format_args!(
                "[Primary] cannot listen on {address}: {source}"
            ));
            1
        }
        Err(e) => {
            shout(format_args!("[Primary] {e}"));
            1
        }
    }
}

/// One line on stdout. Output is best effort: a closed stdout (`| head -1`) loses the line,
/// where `println!` would panic and take the primary down.
fn say(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// One line on stderr, best effort like [`say`].
fn shout(line: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn signal_name(signal: i32) -> String {
    nix::sys::signal::Signal::try_from(signal)
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| signal.to_string())
}

#[tokio::main(flavor = "current_thread")]
async fn worker(addr: &str, delay: Duration) -> forkline::Result<()> {
    // No signal handling here: each worker is in its own process group, so a terminal's Ctrl-C
    // reaches only the primary, which tells every worker to disconnect.
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
