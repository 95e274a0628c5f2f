//! Scenarios of servers and ports over time: a server closed and listened again, one port used
//! by two workers in turn, and a listen that fails because the port is taken.

use forkline::{Event, Mode, Worker, WorkerHandle};
use nix::sys::signal::Signal;
use serde_json::json;

use crate::primary::{hog_port, which, who, Primary};
use crate::worker::{env_port, fail, idle, listen, messages, recv};

/// The server restart shared by `server_restart_rr` and `server_restart_none`: worker 1
/// listens; worker 2 listens, closes its server, listens again (same port: `listen(0)` is
/// shared), closes it and disconnects itself, exiting 0; then worker 1 is disconnected and
/// exits 0.
async fn server_restart(mode: Mode) -> Result<Primary, String> {
    let mut p = Primary::start(|b| b.mode(mode)).await?;
    let w1 = p.fork()?;
    let first = p.wait_listening(&w1).await?;
    let w2 = p.fork()?;
    let exit = p.wait_exit(&w2).await?;
    check!(
        exit.code == Some(0) && exit.signal.is_none(),
        "worker 2 did not exit normally: {exit}"
    );
    w1.disconnect();
    let exit = p.wait_exit(&w1).await?;
    check!(
        exit.code == Some(0) && exit.signal.is_none(),
        "worker 1 did not exit normally: {exit}"
    );
    let again: Vec<&String> = p
        .log
        .iter()
        .filter_map(|e| match e {
            Event::Listening { worker, address } if *worker == w2 => Some(address),
            _ => None,
        })
        .collect();
    check!(
        again.len() == 2 && again.iter().all(|a| **a == first.to_string()),
        "worker 2 should have listened twice on {first}; its listening events: {again:?}"
    );
    Ok(p)
}

/// The server-restart worker part (see [`server_restart`]).
async fn server_restart_worker(worker: Worker, id: usize) -> i32 {
    let server = match listen(&worker, "127.0.0.1:0").await {
        Ok(server) => server,
        Err(e) => return fail(id, format_args!("listen: {e}")),
    };
    if id != 2 {
        return idle(&worker).await;
    }
    drop(server);
    match listen(&worker, "127.0.0.1:0").await {
        Ok(server) => drop(server),
        Err(e) => return fail(id, format_args!("listening again after close: {e}")),
    }
    worker.disconnect();
    0
}

/// Round-robin (`SCHED_RR`) server restart, see [`server_restart`].
pub mod server_restart_rr {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        server_restart(Mode::RoundRobin).await
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        server_restart_worker(worker, id).await
    }
}

/// Shared-socket (`SCHED_NONE`) server restart, see [`server_restart`].
pub mod server_restart_none {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        server_restart(Mode::Shared).await
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        server_restart_worker(worker, id).await
    }
}

/// Two workers and one port, over time: worker 1 listens on it, and a second server of its
/// own on the same port fails (in Node each server of a worker is a handle of its own, so the
/// port is taken); worker 1 closes its server; worker 2 listens on the port; worker 1 listens on
/// it again and closes that; both are killed. The port is a free one on 127.0.0.1 (Node's test
/// uses `::` port 8000). A worker-side failure is reported as a `FAIL` message.
pub mod port_reuse_between_workers {
    use super::*;

    /// Waits for the message `{cmd}` from `worker`, failing on its `FAIL` message.
    async fn expect(p: &mut Primary, worker: &WorkerHandle, cmd: &str) -> Result<(), String> {
        let what = format!("{cmd} from {}", which(worker));
        let event = p
            .wait_for(&what, |e| {
                matches!(e, Event::Message { worker: w, payload }
                    if w == worker && (payload["cmd"] == json!(cmd) || payload["cmd"] == json!("FAIL")))
            })
            .await?;
        match event {
            Event::Message { payload, .. } if payload["cmd"] == json!(cmd) => Ok(()),
            Event::Message { payload, .. } => Err(format!("{}: {}", who(worker), payload["why"])),
            _ => unreachable!("wait_for matched a message"),
        }
    }

    pub async fn primary() -> Result<Primary, String> {
        let (hold, port) = hog_port()?;
        drop(hold);
        let mut p = Primary::start(|b| b.env("REUSE_PORT", port.to_string())).await?;
        let w1 = p.fork()?;
        expect(&mut p, &w1, "WORKER1_SERVER1_CLOSED").await?;
        let w2 = p.fork()?;
        expect(&mut p, &w2, "WORKER2_SERVER1_STARTED").await?;
        w1.send(&json!({ "cmd": "WORKER2_SERVER1_STARTED" }))
            .map_err(|e| format!("send: {e}"))?;
        expect(&mut p, &w1, "WORKER1_SERVER2_CLOSED").await?;
        for w in [&w1, &w2] {
            w.kill(Signal::SIGTERM)
                .map_err(|e| format!("kill(): {e}"))?;
        }
        for w in [&w1, &w2] {
            let exit = p.wait_exit(w).await?;
            check!(
                exit.signal == Some(Signal::SIGTERM as i32),
                "{} exited with {exit}, not by kill()",
                who(w)
            );
        }
        Ok(p)
    }

    /// The worker's steps; `Err` is what went wrong.
    async fn steps(worker: &Worker, id: usize) -> Result<(), String> {
        let address = env_port("REUSE_PORT");
        let send = |cmd: &str| {
            worker
                .send(&json!({ "cmd": cmd }))
                .map_err(|e| format!("send {cmd}: {e}"))
        };
        let server1 = listen(worker, &address)
            .await
            .map_err(|e| format!("listen on {address}: {e}"))?;
        if id == 2 {
            send("WORKER2_SERVER1_STARTED")?;
            drop(server1);
            return Ok(());
        }
        if let Ok(_second) = listen(worker, &address).await {
            return Err(format!(
                "a second server of the same worker listened on {address}, which its first server holds"
            ));
        }
        drop(server1);
        send("WORKER1_SERVER1_CLOSED")?;
        let mut messages = messages(worker);
        match recv(&mut messages).await {
            Some(m) if m["cmd"] == json!("WORKER2_SERVER1_STARTED") => {}
            other => return Err(format!("expected WORKER2_SERVER1_STARTED, got {other:?}")),
        }
        let server2 = listen(worker, &address)
            .await
            .map_err(|e| format!("listening again on {address}: {e}"))?;
        drop(server2);
        send("WORKER1_SERVER2_CLOSED")
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        if let Err(why) = steps(&worker, id).await {
            let _ = worker.send(&json!({ "cmd": "FAIL", "why": why }));
            return fail(id, why);
        }
        idle(&worker).await
    }
}

/// A worker's listen on a port that is taken fails with EADDRINUSE and leaves the primary
/// unconfused: once the port is released, the same listen succeeds. (Node's file checks this
/// with a bare `child_process.fork`; here it is a cluster worker listening through the
/// primary.)
pub mod eaddrinuse {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let (hog, port) = hog_port()?;
        let mut p = Primary::start(|b| b.env("HOG_PORT", port.to_string())).await?;
        let w = p.fork()?;
        p.wait_message_eq(&w, json!("stop-listening")).await?;
        drop(hog);
        w.send(&"stopped-listening")
            .map_err(|e| format!("send: {e}"))?;
        let addr = p.wait_listening(&w).await?;
        check!(
            addr.port() == port,
            "the worker listened on {addr}, not port {port}"
        );
        let exit = p.wait_exit(&w).await?;
        check!(exit.code == Some(0), "worker-side checks failed: {exit}");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let address = env_port("HOG_PORT");
        match listen(&worker, &address).await {
            Ok(_) => {
                return fail(
                    id,
                    format_args!("listening on the taken {address} succeeded"),
                )
            }
            Err(e) if e.to_string().contains("Address already in use") => {}
            Err(e) => return fail(id, format_args!("expected EADDRINUSE, got {e}")),
        }
        if let Err(e) = worker.send(&"stop-listening") {
            return fail(id, format_args!("send: {e}"));
        }
        let mut messages = messages(&worker);
        match recv(&mut messages).await {
            Some(m) if m == json!("stopped-listening") => {}
            other => {
                return fail(
                    id,
                    format_args!("expected stopped-listening, got {other:?}"),
                )
            }
        }
        match listen(&worker, &address).await {
            Ok(server) => drop(server),
            Err(e) => {
                return fail(
                    id,
                    format_args!("listening again after the port was freed: {e}"),
                )
            }
        }
        worker.disconnect();
        0
    }
}

/// Shared mode: the primary holds a port; the worker's listen on it fails with EADDRINUSE,
/// the worker disconnects itself and exits 0.
pub mod shared_handle_bind_error {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        let (_hog, port) = hog_port()?;
        let mut p =
            Primary::start(|b| b.mode(Mode::Shared).env("HOG_PORT", port.to_string())).await?;
        let w = p.fork()?;
        let exit = p.wait_exit(&w).await?;
        check!(exit.code == Some(0), "worker-side checks failed: {exit}");
        Ok(p)
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        let address = env_port("HOG_PORT");
        match listen(&worker, &address).await {
            Ok(_) => fail(id, "listen should have failed"),
            Err(e) if e.to_string().contains("Address already in use") => {
                worker.disconnect();
                0
            }
            Err(e) => fail(id, format_args!("expected EADDRINUSE, got {e}")),
        }
    }
}
