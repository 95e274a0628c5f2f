//! Scenarios of what the cluster reports and carries: a worker's events and their order, the
//! `listening` port, messages both ways, and the settings a worker starts with (environment,
//! arguments, working directory).

use forkline::{Event, Worker, WorkerStdio};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout_at;

use crate::primary::{subject, who, Primary};
use crate::worker::{bounded, fail, idle, listen, messages, read_to_eof, recv, serve, Conn};

/// The cluster's events for a worker that listens and is killed: `fork`, `online`,
/// `listening`, `exit` in that order, each about the worker `fork()` returned (id 1: the lowest
/// free slot), `listening` with 127.0.0.1 and a real port, `exit` with SIGTERM. Not ported:
/// `worker.state` at each event (events reach the primary's code asynchronously, so forkline's
/// state may be further along), `instanceof cluster.Worker`, NODE_UNIQUE_ID removal.
pub mod basic {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        check!(
            w.id() == 1,
            "the first forked worker has id {}, not 1",
            w.id()
        );
        let addr = p.wait_listening(&w).await?;
        check!(
            addr.ip().to_string() == "127.0.0.1" && addr.port() >= 1,
            "listening address {addr}: expected 127.0.0.1 and a port"
        );
        w.kill(Signal::SIGTERM)
            .map_err(|e| format!("kill(): {e}"))?;
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code.is_none() && exit.signal == Some(Signal::SIGTERM as i32),
            "exit after kill(): {exit}"
        );
        check!(w.is_dead(), "is_dead() is false at the exit event");
        let slot_events: Vec<&Event> = p
            .log
            .iter()
            .filter(|e| subject(e).is_some_and(|s| s.id() == 1))
            .collect();
        check!(
            slot_events.iter().all(|e| subject(e) == Some(&w)),
            "an event for slot 1 was not about the worker fork() returned"
        );
        let order: Vec<Option<usize>> = ["fork", "online", "listening", "exit"]
            .iter()
            .map(|name| p.index_of(name, &w))
            .collect();
        check!(
            order.iter().all(Option::is_some) && order.windows(2).all(|pair| pair[0] < pair[1]),
            "expected fork, online, listening, exit in order; positions {order:?}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let server = match listen(&worker, "127.0.0.1:0").await {
            Ok(server) => server,
            Err(e) => return fail(id, format_args!("listen: {e}")),
        };
        // mustNotCall: nobody connects.
        let served = serve(server, |_conn| async {
            Err("a connection arrived".to_string())
        })
        .await;
        if let Err(e) = served {
            return fail(id, e);
        }
        worker.disconnect();
        0
    }
}

/// The cluster's `listening` event carries the real port (not 0).
pub mod listening_port {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let addr = p.wait_listening(&w).await?;
        check!(addr.port() != 0, "the listening event says port 0");
        w.kill(Signal::SIGTERM)
            .map_err(|e| format!("kill(): {e}"))?;
        p.wait_exit(&w).await?;
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        basic::worker(worker, id).await
    }
}

/// Messages both ways: the worker, on a TCP connection from the primary, sends a message over
/// IPC; the primary sends one on connecting, which the worker echoes over TCP. The `message`
/// event comes once, from the right worker. Not ported: `worker.on('message')` and
/// `cluster.on('message')` as two channels (forkline has one event stream).
pub mod message {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        let addr = p.wait_listening(&w).await?;
        let mut client = timeout_at(p.deadline, TcpStream::connect(addr))
            .await
            .map_err(|_| "timed out connecting".to_string())?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        w.send(&"message from primary")
            .map_err(|e| format!("send: {e}"))?;
        let from_worker = p.wait_message(&w).await?;
        check!(
            from_worker == json!("message from worker"),
            "The primary did not get the correct message: {from_worker}"
        );
        // The worker's answer over TCP: one JSON object.
        let mut data = Vec::new();
        let echo: Value = loop {
            let mut chunk = [0u8; 1024];
            let n = timeout_at(p.deadline, client.read(&mut chunk))
                .await
                .map_err(|_| "timed out waiting for the worker's TCP answer".to_string())?
                .map_err(|e| format!("reading the worker's TCP answer: {e}"))?;
            check!(n > 0, "the worker closed the connection without answering");
            data.extend_from_slice(&chunk[..n]);
            if let Ok(value) = serde_json::from_slice(&data) {
                break value;
            }
        };
        check!(
            echo["code"] == json!("received message")
                && echo["echo"] == json!("message from primary"),
            "The worker did not get the correct message: {echo}"
        );
        client
            .shutdown()
            .await
            .map_err(|e| format!("ending the client: {e}"))?;
        timeout_at(p.deadline, read_to_eof(&mut client))
            .await
            .map_err(|_| "timed out waiting for the worker to end the connection".to_string())?
            .map_err(|e| format!("reading to the end: {e}"))?;
        w.kill(Signal::SIGTERM)
            .map_err(|e| format!("kill(): {e}"))?;
        p.wait_exit(&w).await?;
        check!(
            p.count("message", &w) == 1,
            "expected one message event, got {}",
            p.count("message", &w)
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let server = match listen(&worker, "127.0.0.1:0").await {
            Ok(server) => server,
            Err(e) => return fail(id, format_args!("listen: {e}")),
        };
        let mut messages = messages(&worker);
        let mut socket: Option<Conn> = None;
        let mut message: Option<Value> = None;
        let talk = async {
            loop {
                if let (Some(socket), Some(message)) = (socket.as_mut(), message.as_ref()) {
                    let answer = json!({ "code": "received message", "echo": message });
                    socket
                        .write_all(answer.to_string().as_bytes())
                        .await
                        .map_err(|e| format!("writing the answer: {e}"))?;
                    return Ok::<(), String>(());
                }
                tokio::select! {
                    accepted = server.accept(), if socket.is_none() => match accepted {
                        Ok(Some((conn, _))) => {
                            socket = Some(conn);
                            worker
                                .send(&"message from worker")
                                .map_err(|e| format!("send: {e}"))?;
                        }
                        Ok(None) => return Err("disconnected before the connection".into()),
                        Err(e) => return Err(format!("accept: {e}")),
                    },
                    received = messages.recv(), if message.is_none() => match received {
                        Some(m) => message = Some(m),
                        None => return Err("disconnected before the message".into()),
                    },
                }
            }
        };
        if let Err(e) = bounded("the connection and the message", talk).await {
            return fail(id, e);
        }
        // allowHalfOpen is false: when the client ends, end too.
        if let Some(mut socket) = socket {
            if let Err(e) = read_to_eof(&mut socket).await {
                return fail(id, format_args!("reading to the end: {e}"));
            }
        }
        idle(&worker).await
    }
}

/// User messages that look like the cluster's own (`{cmd: 'NODE_CLUSTER'}` in Node, a packet
/// `{"type": "disconnect"}` in forkline's protocol) are plain messages: the worker gets them,
/// in order, before the real disconnect, and exits 0.
pub mod invalid_message {
    use super::*;

    fn sent() -> [Value; 2] {
        [
            json!({ "cmd": "NODE_CLUSTER", "ack": -1 }),
            json!({ "type": "disconnect" }),
        ]
    }

    pub async fn primary() -> Result<Primary, String> {
        let mut p = Primary::start(|b| b).await?;
        let w = p.fork()?;
        p.wait_event("online", &w).await?;
        for message in sent() {
            w.send(&message)
                .map_err(|e| format!("send {message}: {e}"))?;
        }
        w.disconnect();
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.signal.is_none(),
            "expected code 0 (the worker got both messages), got {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let mut messages = messages(&worker);
        let mut got = Vec::new();
        while let Some(message) = recv(&mut messages).await {
            got.push(message);
        }
        if got != sent() {
            return fail(id, format_args!("expected {:?}, got {got:?}", sent()));
        }
        idle(&worker).await
    }
}

/// Environment set for workers reaches them and overrides the primary's own value; the
/// worker's message, sent just before it exits, reaches the primary before its `exit` event.
/// forkline's `fork()` takes no environment, so the variables are set with
/// `ClusterBuilder::env` (Node's `cluster.fork(env)`).
pub mod fork_env {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let own = std::env::var("cluster_test_overwrite").unwrap_or_default();
        check!(
            own == "old",
            "the test must run with cluster_test_overwrite=old, not {own:?}"
        );
        let mut p = Primary::start(|b| {
            b.env("cluster_test_prop", "custom")
                .env("cluster_test_overwrite", "new")
        })
        .await?;
        let w = p.fork()?;
        let data = p.wait_message_before_exit(&w).await?;
        check!(
            data["prop"] == json!("custom"),
            "The worker did not receive the correct env: {data}"
        );
        check!(
            data["overwrite"] == json!("new"),
            "The custom environment did not overwrite the existing environment: {data}"
        );
        let exit = p.wait_exit(&w).await?;
        check!(exit.code == Some(0), "worker exit: {exit}");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let data = json!({
            "prop": std::env::var("cluster_test_prop").ok(),
            "overwrite": std::env::var("cluster_test_overwrite").ok(),
        });
        match worker.send(&data) {
            Ok(()) => 0,
            Err(e) => fail(id, format_args!("send: {e}")),
        }
    }
}

/// `setupPrimary({args, silent})`: the settings are kept and every worker gets the arguments
/// (each sends its first argument, then is killed). Not ported: the `setup` event (forkline's
/// settings are fixed when the cluster starts).
pub mod setup_primary {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let mut p =
            Primary::start(|b| b.args(["custom argument"]).stdio(WorkerStdio::Null)).await?;
        let options = p.cluster.options();
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        check!(
            options.args == ["custom argument"]
                && options.stdio == WorkerStdio::Null
                && options.exec.canonicalize().ok() == exe.canonicalize().ok(),
            "The settings do not have the correct properties: args {:?}, stdio {:?}, exec {}",
            options.args,
            options.stdio,
            options.exec.display()
        );
        let workers = [p.fork()?, p.fork()?];
        for w in &workers {
            p.wait_event("online", w).await?;
            let data = p.wait_message(w).await?;
            check!(
                data == json!("custom argument"),
                "Arguments were not sent to {}: it got {data}",
                who(w)
            );
            w.kill(Signal::SIGTERM)
                .map_err(|e| format!("kill(): {e}"))?;
        }
        for w in &workers {
            p.wait_exit(w).await?;
        }
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let first = std::env::args().nth(1);
        if let Err(e) = worker.send(&first) {
            return fail(id, format_args!("send: {e}"));
        }
        idle(&worker).await
    }
}

/// `setupPrimary({cwd})`: the worker runs in that directory; it sends its cwd and disconnects
/// itself, and the message reaches the primary before the `exit` event. Not ported: the first
/// fork before `setupPrimary` (forkline's settings are fixed when the cluster starts).
pub mod cwd {
    use super::*;

    /// Removes the scenario's directory however the scenario ends.
    struct TempDir(std::path::PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(&self.0);
        }
    }

    pub async fn primary() -> Result<Primary, String> {
        let dir =
            std::env::temp_dir().join(format!("forkline-node-port-cwd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let dir = TempDir(dir.canonicalize().map_err(|e| e.to_string())?);
        let mut p = Primary::start(|b| b.cwd(&dir.0)).await?;
        check!(
            p.cluster.options().cwd.as_deref() == Some(dir.0.as_path()),
            "settings.cwd is {:?}",
            p.cluster.options().cwd
        );
        let w = p.fork()?;
        let reported = p.wait_message_before_exit(&w).await?;
        check!(
            reported == json!(dir.0.to_string_lossy()),
            "the worker runs in {reported}, not {}",
            dir.0.display()
        );
        let exit = p.wait_exit(&w).await?;
        check!(
            exit.code == Some(0) && exit.exited_after_disconnect,
            "after the worker disconnected itself: {exit}"
        );
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let here = std::env::current_dir().map(|d| d.to_string_lossy().into_owned());
        if let Err(e) = worker.send(&here.unwrap_or_default()) {
            return fail(id, format_args!("send: {e}"));
        }
        worker.disconnect();
        0
    }
}
