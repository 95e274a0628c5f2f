//! The control socket: a Unix stream socket the primary serves so that a running cluster can
//! be asked what it is doing and told what to do (`forkline status`, `reload`, `scale`,
//! `stop`, `restart`). One JSON object per line each way, versioned (`docs/CONTROL.md`).
//!
//! The socket is 0600 in a directory the primary creates 0700, and each connection is checked
//! against the peer's credentials (SO_PEERCRED): only the primary's own user, or root, is
//! served. A malformed request gets an error reply; the primary carries on.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::error::{Error, Result};
use std::sync::Arc;

use crate::primary::core::Core;
use crate::primary::event::Replacement;
use crate::primary::lifecycle::{reload, shutdown, supervisor};
use crate::primary::ops::upgrade;
use crate::primary::{lifecycle::replace, task};

/// The version of the control protocol this primary speaks.
pub(crate) const CONTROL_VERSION: u32 = 1;

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

/// A request on the control socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub(crate) enum Request {
    /// The cluster and every worker.
    Status,
    /// A rolling reload; answered when it has finished or failed.
    Reload,
    /// A new number of workers: `workers`, or the current number plus `delta`.
    Scale {
        /// The new number of workers.
        #[serde(default)]
        workers: Option<usize>,
        /// Workers to add (or remove, when negative).
        #[serde(default)]
        delta: Option<i64>,
    },
    /// Replace one slot's worker (start a new one, then stop the old one).
    Restart {
        /// The slot.
        slot: usize,
    },
    /// Recent worker output: up to `lines` lines (default 100) as `{"time","slot","pid",
    /// "stream","line"}` objects, then, with `follow`, every new line until the client hangs up.
    Logs {
        /// How many recent lines.
        #[serde(default)]
        lines: Option<usize>,
        /// Keep sending new lines.
        #[serde(default)]
        follow: bool,
        /// Only this slot's lines.
        #[serde(default)]
        slot: Option<usize>,
    },
    /// Replace the primary itself: start the program again as a new primary, which takes
    /// over once its workers are ready. Answered when it has, or has failed.
    Upgrade,
    /// Stop the cluster gracefully (or at once with `now`).
    Stop {
        /// SIGKILL the workers instead of asking them to finish.
        #[serde(default)]
        now: bool,
    },
}

/// A request line: the protocol version and the request.
#[derive(Debug, Deserialize)]
struct Envelope {
    v: u32,
    #[serde(flatten)]
    request: Request,
}

/// Binds the control socket at `path`: creates its directory (0700) if missing, replaces a
/// stale socket file left by a primary that was killed, and refuses one a live cluster serves.
pub(crate) fn bind(path: &Path) -> Result<UnixListener> {
    let control_error = |source: io::Error| Error::Listen {
        address: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(dir)
                .and_then(|()| {
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                })
                .map_err(control_error)?;
        }
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(control_error(io::Error::new(
                io::ErrorKind::AddrInUse,
                "a running cluster serves this control socket",
            )));
        }
        std::fs::remove_file(path).map_err(control_error)?;
    }
    let listener = UnixListener::bind(path).map_err(control_error)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(control_error)?;
    Ok(listener)
}

/// Takes over the control socket a previous primary served at `path` (`Cluster::upgrade`).
pub(crate) fn adopt(path: &Path, fd: std::os::fd::OwnedFd) -> Result<UnixListener> {
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener
        .set_nonblocking(true)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|source| Error::Listen {
            address: path.display().to_string(),
            source,
        })
}

/// Serves the control socket until the cluster has stopped (its file is removed by the
/// shutdown), or until a new primary takes it over (`Cluster::upgrade`).
pub(crate) fn serve(core: Arc<Core>, listener: UnixListener) {
    if let Ok(copy) = crate::sys::dup_cloexec(std::os::fd::AsFd::as_fd(&listener)) {
        core.upgrades().keep_control(copy);
    }
    task::spawn("control", async move {
        let mut finished = core.finished().subscribe();
        let mut handover = core.upgrades().handover.subscribe();
        let mut stopped = std::pin::pin!(async move {
            tokio::select! {
                _ = finished.wait_for(|f| f.is_some()) => {}
                _ = handover.wait_for(|h| *h) => {}
            }
        });
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        task::spawn("control-client", client(core.arc(), stream));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "control socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                },
                _ = &mut stopped => break,
            }
        }
    });
}

/// True when the peer is this process's user or root.
fn authorized(stream: &UnixStream) -> bool {
    let me = nix::unistd::Uid::effective().as_raw();
    stream
        .peer_cred()
        .is_ok_and(|cred| cred.uid() == me || cred.uid() == 0)
}

/// Serves one client: a reply line for each request line.
async fn client(core: Arc<Core>, stream: UnixStream) {
    if !authorized(&stream) {
        let (_, mut writer) = stream.into_split();
        let reply = json!({"ok": false, "error": "permission denied: not the cluster's user"});
        let _ = send(&mut writer, &reply).await;
        return;
    }
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    let mut line = Vec::new();
    loop {
        line.clear();
        // One line, at most MAX_REQUEST bytes: a client cannot make the primary buffer more.
        match (&mut reader)
            .take(MAX_REQUEST + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let reply = if line.len() as u64 > MAX_REQUEST {
            json!({"ok": false, "error": "request too long"})
        } else {
            match parse(&String::from_utf8_lossy(&line)) {
                Ok(Request::Logs {
                    lines,
                    follow,
                    slot,
                }) => {
                    let lines = lines.unwrap_or(DEFAULT_LOG_LINES);
                    logs(&core, reader, writer, lines, follow, slot).await;
                    return;
                }
                Ok(request) => answer(&core, request).await,
                Err(reply) => reply,
            }
        };
        if send(&mut writer, &reply).await.is_err() {
            return;
        }
        if line.len() as u64 > MAX_REQUEST {
            // The rest of that line would be read as requests: end the connection instead.
            return;
        }
    }
}

/// Lines of output sent for a `logs` request that does not say how many.
const DEFAULT_LOG_LINES: usize = 100;

/// Answers a `logs` request: the recent lines, then (with `follow`) each new one until the
/// client hangs up or the cluster stops, then `{"ok":true,"end":true}` (or, for a follower
/// that fell too far behind, a `{"skipped":N}` object in place of the lines it missed).
async fn logs(
    core: &Core,
    mut reader: BufReader<OwnedReadHalf>,
    mut writer: OwnedWriteHalf,
    lines: usize,
    follow: bool,
    slot: Option<usize>,
) {
    let (recent, mut new_lines) = core.output().recent_and_follow(lines, slot);
    for line in recent {
        if send(&mut writer, &json!(*line)).await.is_err() {
            return;
        }
    }
    if follow {
        let mut finished = core.finished().subscribe();
        let mut rest = [0u8; 512];
        loop {
            let next = tokio::select! {
                next = new_lines.recv() => next,
                // Anything more from the client is ignored; its hang-up ends the stream.
                read = reader.read(&mut rest) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                },
                _ = finished.wait_for(|f| f.is_some()) => break,
            };
            let reply = match next {
                Ok(line) if slot.is_none_or(|s| line.slot == s) => json!(*line),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(skipped)) => json!({"skipped": skipped}),
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if send(&mut writer, &reply).await.is_err() {
                return;
            }
        }
    }
    let _ = send(&mut writer, &json!({"ok": true, "end": true})).await;
}

/// Writes one reply line.
async fn send(writer: &mut OwnedWriteHalf, reply: &Value) -> io::Result<()> {
    writer.write_all(format!("{reply}\n").as_bytes()).await
}

/// The request on one line, or the error reply for a line that is none.
fn parse(line: &str) -> std::result::Result<Request, Value> {
    let envelope: Envelope = serde_json::from_str(line)
        .map_err(|e| json!({"ok": false, "error": format!("bad request: {e}")}))?;
    if envelope.v != CONTROL_VERSION {
        return Err(json!({"ok": false, "error": format!(
            "unsupported control protocol version {}; this primary speaks {CONTROL_VERSION}",
            envelope.v
        )}));
    }
    Ok(envelope.request)
}

/// The reply to one request (`logs` is answered as a stream by [`logs`]).
async fn answer(core: &Core, request: Request) -> Value {
    match request {
        Request::Status => {
            let mut status =
                serde_json::to_value(crate::primary::ops::stats::snapshot(core, &core.traffic()))
                    .unwrap_or(Value::Null);
            status["ok"] = json!(true);
            status
        }
        Request::Reload => match reload::reload(core).await {
            Ok(()) => json!({"ok": true}),
            Err(Error::ReloadFailed { slot, reason }) => json!({
                "ok": false, "slot": slot, "error": format!("slot {slot}: the new worker {reason}")
            }),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Request::Scale { workers, delta } => {
            let target = match (workers, delta) {
                (Some(n), None) => Some(n as i64),
                (None, Some(d)) => Some(core.target() as i64 + d),
                _ => None,
            };
            match target {
                Some(n) if n >= 1 => match supervisor::scale(core, n as usize) {
                    Ok(()) => json!({"ok": true, "workers": n}),
                    Err(e) => json!({"ok": false, "error": e.to_string()}),
                },
                Some(n) => {
                    json!({"ok": false, "error": format!("cannot scale to {n}: at least 1 worker")})
                }
                None => json!({"ok": false, "error": "scale needs `workers` or `delta`"}),
            }
        }
        Request::Restart { slot } => {
            if core.worker(slot).is_none() {
                return json!({"ok": false, "error": format!("no worker in slot {slot}")});
            }
            match replace::replace(core, slot, Replacement::Reload, None).await {
                Ok(()) => json!({"ok": true}),
                Err(reason) => {
                    json!({"ok": false, "slot": slot, "error": format!("slot {slot}: the new worker {reason}")})
                }
            }
        }
        Request::Logs { .. } => json!({"ok": false, "error": "logs is answered as a stream"}),
        Request::Upgrade => match upgrade::upgrade(core).await {
            Ok(pid) => json!({"ok": true, "pid": pid}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Request::Stop { now } => {
            if now {
                shutdown::now(core);
            } else {
                shutdown::graceful(core);
            }
            json!({"ok": true})
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_their_version() {
        let parse = |line: &str| serde_json::from_str::<Envelope>(line).map(|e| (e.v, e.request));
        assert_eq!(
            parse(r#"{"v":1,"cmd":"status"}"#).unwrap(),
            (1, Request::Status)
        );
        assert_eq!(
            parse(r#"{"v":1,"cmd":"scale","delta":-1}"#).unwrap().1,
            Request::Scale {
                workers: None,
                delta: Some(-1)
            }
        );
        assert_eq!(
            parse(r#"{"v":1,"cmd":"stop","now":true}"#).unwrap().1,
            Request::Stop { now: true }
        );
        assert!(parse(r#"{"v":1,"cmd":"explode"}"#).is_err());
        assert!(
            parse(r#"{"cmd":"status"}"#).is_err(),
            "the version is required"
        );
    }
}
