//! Scenarios of one worker's life through the `Worker` object (Node's
//! `test-cluster-worker-*.js`), on both sides: `isConnected` and `isDead`, `kill`,
//! `disconnect` and `destroy` from either side, its exit code and signal, and the events that
//! report them.

use std::time::Duration;

use forkline::{Mode, Worker};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at};

use crate::primary::{alive, hog_port, raw_kill, say, who, Primary};
use crate::worker::{fail, idle, listen, messages, read_to_eof, recv, serve, until_disconnected};

/// A message sent right after `fork()` (before `online`) reaches the worker, which exits with
/// code 2 on it. Not ported: the same message on both `process` and `cluster.worker` and the
/// worker's `error` event (Node's objects; forkline has one message stream).
pub mod worker_events {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        if let Err(e) = w.send(&"SOME MESSAGE") {
            return Err(format!("send() right after fork() failed: {e}"));
        }
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(2),
            "the worker did not get the message (it exits 2 on it): {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        match recv(&mut messages(&worker)).await {
            Some(m) if m == json!("SOME MESSAGE") => 2,
            other => fail(id, format_args!("expected \"SOME MESSAGE\", got {other:?}")),
        }
    }
}

/// `is_connected()` is true right after `fork()` and false at the `disconnect` event; in the
/// worker, connected until the primary's disconnect.
pub mod worker_isconnected {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        check!(
            w.is_connected(),
            "is_connected() is false right after fork()"
        );
        p.wait_message_eq(&w, json!("readyToDisconnect")).await?;
        w.disconnect();
        p.wait_event("disconnect", &w).await?;
        check!(
            !w.is_connected(),
            "is_connected() is still true at the disconnect event"
        );
        let exit = p.wait_exit(&w).await?;
        check!(exit.code == Some(0), "worker-side checks failed: {exit}");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        if worker.is_disconnected() {
            return fail(id, "the worker is disconnected at start");
        }
        if let Err(e) = worker.send(&"readyToDisconnect") {
            return fail(id, format_args!("send: {e}"));
        }
        until_disconnected(&worker).await;
        if !worker.is_disconnected() {
            return fail(id, "is_disconnected() is false after the disconnect");
        }
        worker.disconnect();
        0
    }
}

/// `is_dead()` is false right after `fork()` and true at the `exit` event. Also checks
/// forkline's `kill()` semantics: the worker dies of that signal, exited_after_disconnect.
/// Not ported: `cluster.worker.isDead()` inside the worker (no worker-side equivalent).
pub mod worker_isdead {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        check!(!w.is_dead(), "is_dead() is true right after fork()");
        p.wait_message_eq(&w, json!("readyToDie")).await?;
        check!(!w.is_dead(), "is_dead() is true while the worker runs");
        w.kill(Signal::SIGTERM)
            .map_err(|e| format!("kill(): {e}"))?;
        let exit = p.wait_exit(&w).await?;
        check!(w.is_dead(), "is_dead() is false at the exit event");
        check!(
            exit.signal == Some(Signal::SIGTERM as i32) && exit.exited_after_disconnect,
            "after kill(SIGTERM): expected signal 15 and exited_after_disconnect; got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        if let Err(e) = worker.send(&"readyToDie") {
            return fail(id, format_args!("send: {e}"));
        }
        idle(&worker).await
    }
}

/// A worker that exits by itself (code 42, once listening): one `disconnect`, one `exit`,
/// code 42, no signal, exited_after_disconnect false, the process gone. Not ported:
/// `worker.state` (Node's state names).
pub mod worker_exit {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let exit = p.wait_exit(&w).await?;
        check!(
            p.count("disconnect", &w) == 1,
            "the cluster did not emit 'disconnect'"
        );
        check!(
            p.count("exit", &w) == 1,
            "the cluster did not emit 'exit' once"
        );
        check!(
            exit.code == Some(42) && exit.signal.is_none(),
            "the worker exited w/ incorrect code or signal: {exit}"
        );
        check!(
            !exit.exited_after_disconnect && !w.exited_after_disconnect(),
            "the exited_after_disconnect flag is incorrect: {exit}"
        );
        check!(!alive(w.pid()), "the worker is still running");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        match listen(&worker, "127.0.0.1:0").await {
            Ok(_server) => 42,
            Err(e) => fail(id, format_args!("listen: {e}")),
        }
    }
}

/// A worker that exits with 42 at once: the exit event has code 42, no signal, and the
/// worker `fork()` returned.
pub mod worker_death {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(42) && exit.signal.is_none(),
            "expected code 42 and no signal, got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(_worker: Worker, _id: usize) -> i32 {
        42
    }
}

/// A listening worker SIGKILLed by a raw signal (`worker.process.kill`): one `disconnect`,
/// one `exit` with no code and SIGKILL, exited_after_disconnect false, the process gone. Not
/// ported: `worker.state`.
pub mod worker_kill {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_listening(&w).await?;
        raw_kill(&w, Signal::SIGKILL)?;
        let exit = p.wait_exit(&w).await?;
        check!(
            p.count("disconnect", &w) == 1,
            "the cluster did not emit 'disconnect'"
        );
        check!(
            exit.code.is_none() && exit.signal == Some(Signal::SIGKILL as i32),
            "the worker exited w/ incorrect code or signal: {exit}"
        );
        check!(
            !exit.exited_after_disconnect && !w.exited_after_disconnect(),
            "exited_after_disconnect is true after a raw SIGKILL: {exit}"
        );
        check!(!alive(w.pid()), "the worker is still running");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let _server = match listen(&worker, "127.0.0.1:0").await {
            Ok(server) => server,
            Err(e) => return fail(id, format_args!("listen: {e}")),
        };
        idle(&worker).await
    }
}

/// `worker.kill(SIGKILL)` on a listening worker: one `disconnect`, one `exit` with SIGKILL, the
/// process gone, and no longer among the cluster's workers. Node's test expects
/// `exitedAfterDisconnect === false` here; forkline's `kill()` marks the exit as intended
/// (true), so that is what is checked. Not ported: `worker.state`.
pub mod worker_kill_signal {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_listening(&w).await?;
        w.kill(Signal::SIGKILL)
            .map_err(|e| format!("kill(SIGKILL): {e}"))?;
        p.wait_event("disconnect", &w).await?;
        check!(
            w.exited_after_disconnect(),
            "exited_after_disconnect is false at the disconnect event after kill()"
        );
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code.is_none() && exit.signal == Some(Signal::SIGKILL as i32),
            "expected no code and SIGKILL, got {exit}"
        );
        check!(exit.exited_after_disconnect, "exit after kill(): {exit}");
        check!(!alive(w.pid()), "the worker process is still alive");
        check!(
            !p.cluster.workers().contains(&w),
            "the killed worker is still among the cluster's workers"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        worker_kill::worker(worker, id).await
    }
}

/// `worker.disconnect()` on a listening worker: the worker sees the disconnect (exits 42),
/// `disconnect` then `exit`, exited_after_disconnect true, the process gone. Not ported:
/// `worker.disconnect()` returning the worker, `worker.state`.
pub mod worker_disconnect {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_listening(&w).await?;
        w.disconnect();
        p.wait_event("disconnect", &w).await?;
        check!(
            w.exited_after_disconnect(),
            "exited_after_disconnect is false at the disconnect event"
        );
        check!(
            !w.is_connected(),
            "is_connected() is true at the disconnect event"
        );
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(42),
            "Disconnect event did not emit inside worker (it exits 42 on it): {exit}"
        );
        check!(
            exit.exited_after_disconnect,
            "exit after disconnect(): {exit}"
        );
        check!(!alive(w.pid()), "The worker did not die");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let _server = match listen(&worker, "127.0.0.1:0").await {
            Ok(server) => server,
            Err(e) => return fail(id, format_args!("listen: {e}")),
        };
        until_disconnected(&worker).await;
        42
    }
}

/// Worker-side destroy: worker 1 disconnects and exits once disconnected, worker 2 disconnects
/// and exits at once. Both: `disconnect`, `exit`, exited_after_disconnect.
pub mod worker_destroy {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let workers = [p.fork()?, p.fork()?];
        for w in &workers {
            p.wait_event("disconnect", w).await?;
            let exit = p.wait_exit(w).await?;
            check!(
                exit.exited_after_disconnect && exit.code == Some(0),
                "{} destroyed itself: expected code 0 and exited_after_disconnect, got {exit}",
                who(w)
            );
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        worker.disconnect();
        if id == 1 {
            // Destroy once disconnected.
            until_disconnected(&worker).await;
            0
        } else {
            // Destroy while still connected.
            std::process::exit(0)
        }
    }
}

/// A worker that exits 42 shortly after the primary's `disconnect()`: the exit event has code
/// 42. Not ported: `checkForced` (the primary closing the bare IPC channel without a
/// disconnect, `worker.process.disconnect()`: forkline has no such call).
pub mod worker_forced_exit {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("online", &w).await?;
        w.disconnect();
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(42),
            "expected the worker's code 42, got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, _id: usize) -> i32 {
        until_disconnected(&worker).await;
        // Node's setTimeout(() => process.exit(SENTINEL), 10).
        tokio::time::sleep(Duration::from_millis(10)).await;
        42
    }
}

/// A message sent on `online` reaches the worker, whose answer reaches the primary, which then
/// disconnects the worker.
pub mod worker_init {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("online", &w).await?;
        w.send(&"foo").map_err(|e| format!("send on online: {e}"))?;
        let answer = p.wait_message(&w).await?;
        check!(
            answer == json!(true),
            "the worker got something else than \"foo\": {answer}"
        );
        w.disconnect();
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.exited_after_disconnect,
            "exit after disconnect(): {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let mut messages = messages(&worker);
        let Some(message) = recv(&mut messages).await else {
            return fail(id, "no message before the disconnect");
        };
        if let Err(e) = worker.send(&(message == json!("foo"))) {
            return fail(id, format_args!("send: {e}"));
        }
        idle(&worker).await
    }
}

/// A disconnected worker that still holds a connection does not exit until the connection
/// ends: after `disconnect()` and the `disconnect` event, no `exit` for 1 s; the primary then
/// closes the connection and the worker exits.
pub mod worker_no_exit {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let server = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| e.to_string())?;
        let port = server.local_addr().map_err(|e| e.to_string())?.port();
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("online", &w).await?;
        w.send(&json!({ "port": port }))
            .map_err(|e| format!("send: {e}"))?;
        let (conn, _) = timeout_at(p.deadline, server.accept())
            .await
            .map_err(|_| "timed out waiting for the worker to connect".to_string())?
            .map_err(|e| format!("accept: {e}"))?;
        drop(server);
        w.disconnect();
        p.wait_event("disconnect", &w).await?;
        // Node: setTimeout(() => conn.destroy(), 1000); the worker must not exit before.
        if let Ok(exit) = timeout(Duration::from_secs(1), p.wait_exit(&w)).await {
            return Err(format!(
                "worker exited before connection destroyed: {}",
                exit.map_or_else(|e| e, |e| e.to_string())
            ));
        }
        say("destroying the connection");
        drop(conn);
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.exited_after_disconnect,
            "expected code 0 and exited_after_disconnect, got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let mut messages = messages(&worker);
        let port = match recv(&mut messages).await {
            Some(m) => m["port"].as_u64().unwrap_or(0),
            None => return fail(id, "no port before the disconnect"),
        };
        let mut stream = match TcpStream::connect(("127.0.0.1", port as u16)).await {
            Ok(stream) => stream,
            Err(e) => return fail(id, format_args!("connect to {port}: {e}")),
        };
        until_disconnected(&worker).await;
        worker.disconnect();
        // Still alive while the connection lasts.
        if let Err(e) = read_to_eof(&mut stream).await {
            return fail(id, format_args!("reading the connection: {e}"));
        }
        0
    }
}

/// The primary disconnects a worker while a client is connected to it: the worker stops
/// accepting, the connection it holds keeps working until the client ends it, and only then
/// does the worker close its channel (Node: the `disconnect` event comes after the server
/// closed, its connections ended) and exit 0.
pub mod worker_wait_server_close {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let addr = p.wait_listening(&w).await?;
        let mut client = timeout_at(p.deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| "timed out connecting".to_string())?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let mut dot = [0u8; 1];
        timeout_at(p.deadline, client.read_exact(&mut dot))
            .await
            .map_err(|_| "timed out waiting for the worker's '.'".to_string())?
            .map_err(|e| format!("reading the worker's '.': {e}"))?;
        check!(
            dot == *b".",
            "the worker wrote {:?}, not '.'",
            dot[0] as char
        );
        w.disconnect();
        client
            .shutdown()
            .await
            .map_err(|e| format!("ending the client: {e}"))?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.exited_after_disconnect,
            "expected code 0 (worker-side checks passed) and exited_after_disconnect, got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let server = match listen(&worker, "127.0.0.1:0").await {
            Ok(server) => server,
            Err(e) => return fail(id, format_args!("listen: {e}")),
        };
        let served = serve(server, |mut conn| async move {
            conn.write_all(b".")
                .await
                .map_err(|e| format!("writing '.': {e}"))?;
            read_to_eof(&mut conn)
                .await
                .map_err(|e| format!("the connection broke after the disconnect: {e}"))
        })
        .await;
        if let Err(e) = served {
            return fail(id, e);
        }
        // The server is closed: accept ended because of the disconnect.
        if !worker.is_disconnected() {
            return fail(id, "accept ended although the worker was not disconnected");
        }
        worker.disconnect();
        0
    }
}

/// A worker whose listen fails (the port is taken) disconnects itself and exits; the port
/// reaches it in a message sent before it is online. Shared mode (`SCHED_NONE`).
pub mod worker_disconnect_on_error {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let (_hog, port) = hog_port()?;
        let mut p = Primary::start(|b| b.mode(Mode::Shared)).await?;
        let w = p.fork()?;
        w.send(&json!({ "port": port }))
            .map_err(|e| format!("send right after fork(): {e}"))?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.exited_after_disconnect,
            "expected code 0 and exited_after_disconnect (the worker disconnected itself), got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let mut messages = messages(&worker);
        let port = match recv(&mut messages).await {
            Some(m) => m["port"].as_u64().unwrap_or(0),
            None => return fail(id, "no port before the disconnect"),
        };
        match listen(&worker, &format!("127.0.0.1:{port}")).await {
            Ok(_) => fail(
                id,
                format_args!("listening on the taken port {port} succeeded"),
            ),
            Err(_) => {
                worker.disconnect();
                0
            }
        }
    }
}
