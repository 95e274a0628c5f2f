//! The worker side of every scenario: the worker's `main` (connect, then play the scenario's
//! worker part, with a lifetime it cannot outlive) and the Node worker runtime the worker parts
//! use: messages, listen, serve until disconnected, and waits bounded by that lifetime.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use forkline::worker::{AsyncTcpListener, Connection, Messages};
use forkline::Worker;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::{run_worker, ENV_SCENARIO};

/// A worker that is still running after this long exits by itself.
const WORKER_LIFETIME: Duration = Duration::from_secs(30);

pub type Conn = Connection<TcpStream>;

pub fn worker_main(id: usize) -> ! {
    // Whatever happens, no worker of this fixture outlives its welcome.
    std::thread::spawn(move || {
        std::thread::sleep(WORKER_LIFETIME);
        eprintln!("[worker {id}] still running after {WORKER_LIFETIME:?}; exiting");
        std::process::exit(92);
    });
    let name = std::env::var(ENV_SCENARIO).unwrap_or_default();
    let worker = match forkline::worker::connect() {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("[worker {id}] connect failed: {e}");
            std::process::exit(90);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        if id == 0 {
            idle(&worker).await
        } else {
            run_worker(&name, worker, id).await
        }
    });
    std::process::exit(code);
}

/// Reports a failed worker-side assertion; the worker then exits with 1.
pub fn fail(id: usize, what: impl fmt::Display) -> i32 {
    eprintln!("[worker {id} pid {}] FAIL: {what}", std::process::id());
    1
}

/// Awaits `future`, exiting the process if it takes longer than the worker's lifetime.
pub async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match timeout(WORKER_LIFETIME, future).await {
        Ok(value) => value,
        Err(_) => {
            eprintln!(
                "[worker pid {}] timed out waiting for {what}",
                std::process::id()
            );
            std::process::exit(93);
        }
    }
}

/// Waits until the primary asks this worker to disconnect.
pub async fn until_disconnected(worker: &Worker) {
    bounded("the primary's disconnect", worker.disconnected()).await;
}

/// The Node worker runtime with nothing to do: once asked to disconnect, close the channel and
/// exit 0.
pub async fn idle(worker: &Worker) -> i32 {
    until_disconnected(worker).await;
    worker.disconnect();
    0
}

/// The message stream (taken once per process).
pub fn messages(worker: &Worker) -> Messages {
    worker.messages().expect("messages are taken once")
}

/// The next message from the primary; `None` once the primary disconnected this worker.
pub async fn recv(messages: &mut Messages) -> Option<Value> {
    bounded("a message from the primary", messages.recv()).await
}

/// Listens through the primary.
pub async fn listen(worker: &Worker, address: &str) -> forkline::Result<AsyncTcpListener> {
    bounded("the answer to listen", worker.listen_async(address)).await
}

/// Serves `listener` until the worker is disconnected (`accept` ends), then waits for the
/// connections in flight (Node's `server.close()` callback).
pub async fn serve<F, Fut>(listener: AsyncTcpListener, handler: F) -> Result<(), String>
where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut in_flight = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok(Some((conn, _peer))) => {
                in_flight.spawn(handler(conn));
            }
            Ok(None) => break,
            Err(e) => return Err(format!("accept failed: {e}")),
        }
    }
    drop(listener);
    while let Some(done) = bounded("connections to finish", in_flight.join_next()).await {
        done.map_err(|e| format!("connection task failed: {e}"))??;
    }
    Ok(())
}

/// Writes `reply` and closes the connection (Node's `socket.end(reply)`); a client that went
/// away first is fine.
pub async fn reply_and_close(mut conn: Conn, reply: &'static [u8]) -> Result<(), String> {
    let _ = conn.write_all(reply).await;
    let _ = conn.shutdown().await;
    Ok(())
}

/// Reads until the peer closes its side, discarding the data.
pub async fn read_to_eof(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    while bounded("the peer to close", stream.read(&mut buf)).await? > 0 {}
    Ok(())
}

pub fn env_port(name: &str) -> String {
    let port = std::env::var(name).unwrap_or_default();
    format!("127.0.0.1:{port}")
}
