//! Scenarios of `cluster.disconnect()` and of workers disconnected, killed or destroyed, from
//! either side, alone or many at once, idle, listening or holding connections.

use std::net::SocketAddr;

use forkline::{Event, Mode, Worker, WorkerHandle};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::primary::{fetch, is, raw_kill, say, which, who, Primary};
use crate::worker::{
    bounded, env_port, fail, idle, listen, messages, recv, reply_and_close, serve,
};

/// 8 workers, each with two servers; both answer; `cluster.disconnect()` stops them all; then
/// the same again, to confirm the clean-up. forkline keys listeners by address, so two
/// `listen(0)` in one worker would share one listener (Node gives each its own port): the two
/// servers listen on two free ports chosen by the primary instead.
pub mod disconnect {
    use super::*;

    const WORKERS: usize = 8;

    pub async fn primary() -> Result<Primary, String> {
        let (a, b) = {
            let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let b = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let port = |l: &std::net::TcpListener| l.local_addr().map(|a| a.port());
            (
                port(&a).map_err(|e| e.to_string())?,
                port(&b).map_err(|e| e.to_string())?,
            )
        };
        let mut p = Primary::start(|builder| {
            builder
                .env("PORT_A", a.to_string())
                .env("PORT_B", b.to_string())
        })
        .await?;
        for round in 1..=2 {
            say(format_args!("round {round}"));
            let workers: Vec<WorkerHandle> =
                (0..WORKERS).map(|_| p.fork()).collect::<Result<_, _>>()?;
            for w in &workers {
                for port in [a, b] {
                    let what = format!("listening of {} on port {port}", which(w));
                    p.wait_for(&what, |e| {
                        matches!(e, Event::Listening { worker, address }
                            if worker == w && address.ends_with(&format!(":{port}")))
                    })
                    .await?;
                }
            }
            for port in [a, b] {
                let reply = fetch(SocketAddr::from(([127, 0, 0, 1], port)), p.deadline).await?;
                check!(
                    reply == "echo",
                    "round {round}: port {port} answered {reply:?}"
                );
            }
            p.disconnect_all().await?;
            check!(
                p.node_workers().is_empty(),
                "round {round}: workers left after cluster.disconnect(): {:?}",
                p.node_workers()
            );
            for w in &workers {
                let exit = p.wait_exit(w).await?;
                check!(
                    exit.code == Some(0) && exit.exited_after_disconnect,
                    "round {round}: {} exited with {exit}",
                    who(w)
                );
            }
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let mut servers = Vec::new();
        for address in [env_port("PORT_A"), env_port("PORT_B")] {
            match listen(&worker, &address).await {
                Ok(server) => servers.push(server),
                Err(e) => return fail(id, format_args!("listen {address}: {e}")),
            }
        }
        let b = servers.pop().expect("two servers");
        let a = servers.pop().expect("two servers");
        let echo = |conn| reply_and_close(conn, b"echo");
        let (ra, rb) = tokio::join!(serve(a, echo), serve(b, echo));
        if let Err(e) = ra.and(rb) {
            return fail(id, e);
        }
        worker.disconnect();
        0
    }
}

/// `cluster.disconnect()` from a worker's `disconnect` event (the worker is disconnected
/// already and is left alone) ends with every worker gone.
pub mod disconnect_before_exit {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("online", &w).await?;
        w.disconnect();
        p.wait_event("disconnect", &w).await?;
        p.disconnect_all().await?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.exited_after_disconnect,
            "exit after disconnect(): {exit}"
        );
        check!(
            p.node_workers().is_empty(),
            "workers left: {:?}",
            p.node_workers()
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, _id: usize) -> i32 {
        idle(&worker).await
    }
}

/// `cluster.disconnect()` right after two `fork()`s, before the workers exist: both are
/// connected from `fork()`, so both get the disconnect as soon as they exist, and the cluster
/// ends with no workers.
pub mod disconnect_idle_worker {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let workers = [p.fork()?, p.fork()?];
        p.disconnect_all().await?;
        check!(
            p.node_workers().is_empty(),
            "workers left: {:?}",
            p.node_workers()
        );
        for w in &workers {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.exited_after_disconnect,
                "{} exited with {exit}",
                who(w)
            );
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, _id: usize) -> i32 {
        idle(&worker).await
    }
}

/// `cluster.disconnect()` right after `fork()` of a worker that listens (shared mode): its
/// `disconnect` and `exit` events come.
pub mod disconnect_leak {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b.mode(Mode::Shared)).await?;
        let w = p.fork()?;
        p.disconnect_all().await?;
        p.wait_event("disconnect", &w).await?;
        p.wait_exit(&w).await?;
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        // The disconnect may come first; listening is then allowed to fail.
        let server = listen(&worker, "127.0.0.1:0").await;
        if let Err(e) = &server {
            if !worker.is_disconnected() {
                return fail(id, format_args!("listen: {e}"));
            }
        }
        idle(&worker).await
    }
}

/// Shared mode: an idle worker is disconnected after a second one listens, then
/// `cluster.disconnect()` from its `disconnect` event; everything ends. The second worker
/// (Node's `fork({BOUND: 'y'})`) is the one in slot 2.
pub mod disconnect_unshared_tcp {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b.mode(Mode::Shared)).await?;
        let unbound = p.fork()?;
        p.wait_event("online", &unbound).await?;
        let bound = p.fork()?;
        p.wait_listening(&bound).await?;
        unbound.disconnect();
        p.wait_event("disconnect", &unbound).await?;
        p.disconnect_all().await?;
        for w in [&unbound, &bound] {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.exited_after_disconnect,
                "{} exited with {exit}",
                who(w)
            );
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let _server = if id == 2 {
            match listen(&worker, "127.0.0.1:0").await {
                Ok(server) => Some(server),
                Err(e) => return fail(id, format_args!("listen: {e}")),
            }
        } else {
            None
        };
        idle(&worker).await
    }
}

/// The same with a UDP socket: the second worker binds 127.0.0.1:0 for UDP (shared mode)
/// instead of listening on TCP.
pub mod disconnect_unshared_udp {
    use super::*;

    /// The same steps as over TCP.
    pub async fn primary() -> Result<Primary, String> {
        super::disconnect_unshared_tcp::primary().await
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let _socket = if id == 2 {
            // bind_udp is the blocking API.
            let binder = worker.clone();
            let bound = tokio::task::spawn_blocking(move || binder.bind_udp("127.0.0.1:0"));
            match bounded("the answer to bind_udp", bound).await {
                Ok(Ok(socket)) => Some(socket),
                Ok(Err(e)) => return fail(id, format_args!("bind_udp: {e}")),
                Err(e) => return fail(id, format_args!("bind_udp task: {e}")),
            }
        } else {
            None
        };
        idle(&worker).await
    }
}

/// Shared mode: worker 1 listens and says so; the primary then forks worker 2, disconnects
/// worker 1, and disconnects worker 2 as soon as it is online. Both exit with code 0.
pub mod disconnect_race {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b.mode(Mode::Shared)).await?;
        let w1 = p.fork()?;
        p.wait_message_eq(&w1, json!("listening")).await?;
        let w2 = p.fork()?;
        w1.disconnect();
        p.wait_event("online", &w2).await?;
        w2.disconnect();
        for w in [&w1, &w2] {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.code == Some(0),
                "worker exited with error code: {exit}"
            );
        }
        check!(
            p.count("message", &w1) == 1,
            "worker 1 sent {} messages, not 1",
            p.count("message", &w1)
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        match listen(&worker, "127.0.0.1:0").await {
            Ok(_server) => {
                let _ = worker.send(&"listening");
            }
            // Worker 2 may be disconnected before it listens.
            Err(e) if !worker.is_disconnected() => return fail(id, format_args!("listen: {e}")),
            Err(_) => {}
        }
        idle(&worker).await
    }
}

/// A worker that disconnects itself at once exits with code 0, and its exit counts as
/// intended. Not ported: the worker-side `disconnect` event firing asynchronously (Node's
/// event loop).
pub mod disconnect_exited_after_disconnect_race {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.exited_after_disconnect,
            "expected code 0 and exited_after_disconnect, got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, _id: usize) -> i32 {
        worker.disconnect();
        0
    }
}

/// Issue nodejs/node#32106: every worker is told to disconnect or destroy itself at once, and
/// each `disconnect` event makes the primary tell every still-connected worker to disconnect
/// (sends that fail because a worker is leaving are fine). Every worker exits with code 0.
/// One worker per core, at least 2. Node's test sends the same word to all workers (the loop
/// index of the last `online`); this port alternates, as the test intends.
pub mod concurrent_disconnect {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
        let mut p = Primary::start(|b| b).await?;
        let workers: Vec<WorkerHandle> = (0..n).map(|_| p.fork()).collect::<Result<_, _>>()?;
        for w in &workers {
            p.wait_event("online", w).await?;
        }
        for (i, w) in workers.iter().enumerate() {
            if w.is_connected() {
                let _ = w.send(&if i % 2 == 1 { "disconnect" } else { "destroy" });
            }
        }
        let mut seen = 0;
        loop {
            // React to each disconnect event once, in order.
            let disconnects: Vec<usize> = p
                .log
                .iter()
                .enumerate()
                .filter(|(_, e)| workers.iter().any(|w| is(e, "disconnect", w)))
                .map(|(i, _)| i)
                .collect();
            for _ in seen..disconnects.len() {
                for w in &workers {
                    if w.is_connected() {
                        let _ = w.send(&"disconnect");
                    }
                }
            }
            seen = disconnects.len();
            if workers.iter().all(|w| p.index_of("exit", w).is_some()) {
                break;
            }
            p.next("every worker to exit").await?;
        }
        for w in &workers {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.code == Some(0) && exit.signal.is_none(),
                "{} exited with {exit}",
                who(w)
            );
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, _id: usize) -> i32 {
        let mut messages = messages(&worker);
        while let Some(message) = recv(&mut messages).await {
            if worker.is_disconnected() {
                continue;
            }
            match message.as_str() {
                Some("disconnect") => worker.disconnect(),
                Some("destroy") => {
                    worker.disconnect();
                    std::process::exit(0);
                }
                _ => {}
            }
        }
        0
    }
}

/// Shared mode: with a client connected, both workers are disconnected; both exit with code
/// 0 and no signal, after which the client is dropped.
pub mod shared_leak {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b.mode(Mode::Shared)).await?;
        let w1 = p.fork()?;
        let addr = p.wait_listening(&w1).await?;
        let w2 = p.fork()?;
        p.wait_event("online", &w2).await?;
        let conn = timeout_at(p.deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| "timed out connecting".to_string())?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        w1.disconnect();
        w2.disconnect();
        for w in [&w1, &w2] {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.code == Some(0) && exit.signal.is_none(),
                "{} exited with {exit}",
                who(w)
            );
        }
        check!(
            p.node_workers().is_empty(),
            "workers left: {:?}",
            p.node_workers()
        );
        drop(conn);
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        match listen(&worker, "127.0.0.1:0").await {
            Ok(server) => {
                if let Err(e) = serve(server, |conn| reply_and_close(conn, b"bye")).await {
                    return fail(id, e);
                }
            }
            // Worker 2 may be disconnected before it listens.
            Err(e) if !worker.is_disconnected() => return fail(id, format_args!("listen: {e}")),
            Err(_) => {}
        }
        idle(&worker).await
    }
}

/// Worker-side `disconnect()` (worker 1) and `kill()` (worker 2, which exits at once): both
/// exits count as intended, at the `disconnect` event and at the `exit` event, and the
/// `disconnect` event comes first (forkline promises the order Node's test allows either way).
pub mod kill_disconnect {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let workers = [p.fork()?, p.fork()?];
        for w in &workers {
            p.wait_event("disconnect", w).await?;
            check!(
                w.exited_after_disconnect(),
                "{}: exited_after_disconnect is false at the disconnect event",
                who(w)
            );
        }
        for w in &workers {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.exited_after_disconnect && w.exited_after_disconnect(),
                "{}: exited_after_disconnect is false at the exit event ({exit})",
                who(w)
            );
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        worker.disconnect();
        if id == 2 {
            // cluster.worker.kill()
            std::process::exit(0);
        }
        0
    }
}

/// A worker stuck in an endless loop is killed by a raw SIGTERM (`worker.process.kill()`):
/// no code, SIGTERM.
pub mod kill_infinite_loop {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("online", &w).await?;
        raw_kill(&w, Signal::SIGTERM)?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code.is_none() && exit.signal == Some(Signal::SIGTERM as i32),
            "expected no code and SIGTERM, got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(_worker: Worker, _id: usize) -> i32 {
        // while (true); — ended by the signal, or by the worker's lifetime watchdog.
        loop {
            std::hint::spin_loop();
        }
    }
}

/// The worker disconnects itself; the primary sees `disconnect` (with `is_connected()`
/// false), then destroys it (`kill(SIGTERM)` on a worker that may be gone already); it exits.
pub mod call_and_destroy {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("disconnect", &w).await?;
        check!(
            !w.is_connected(),
            "is_connected() is true at the disconnect event"
        );
        if let Err(e) = w.kill(Signal::SIGTERM) {
            // Node's destroy() ignores a process that is gone already.
            let gone =
                matches!(&e, forkline::Error::Io(io) if io.raw_os_error() == Some(libc::ESRCH));
            check!(gone, "destroy() after the disconnect event failed: {e}");
        }
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) || exit.signal == Some(Signal::SIGTERM as i32),
            "worker-side check failed: {exit}"
        );
        check!(exit.exited_after_disconnect, "exit: {exit}");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        if worker.is_disconnected() {
            return fail(id, "isConnected() is false at start");
        }
        worker.disconnect();
        0
    }
}

/// A listening worker disconnects itself (Node: `process.disconnect()`) and exits with code
/// 0 and no signal. forkline has no bare channel close, so this is `Worker::disconnect()`.
pub mod process_disconnect {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.signal.is_none(),
            "Worker did not exit normally: {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        match listen(&worker, "127.0.0.1:0").await {
            Ok(_server) => {
                worker.disconnect();
                0
            }
            Err(e) => fail(id, format_args!("listen: {e}")),
        }
    }
}
