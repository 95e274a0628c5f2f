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

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::broadcast;

use crate::control::{
    Done, Failure, LogLine, LogsReply, Reply, Request, RequestLine, Scaled, Sent, Upgraded,
    CONTROL_VERSION,
};
use crate::error::{Error, Result};
use std::sync::Arc;

use crate::primary::core::Core;
use crate::primary::event::Replacement;
use crate::primary::lifecycle::{reload, shutdown, supervisor};
use crate::primary::ops::upgrade;
use crate::primary::{lifecycle::replace, task};

/// Longest request line accepted.
const MAX_REQUEST: u64 = 64 * 1024;

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
        let reply = failed(Failure::new("permission denied: not the cluster's user"));
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
            failed(Failure::new("request too long"))
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
        if send(&mut writer, &log_line(&line)).await.is_err() {
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
                Ok(line) if slot.is_none_or(|s| line.slot == s) => log_line(&line),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(skipped)) => LogsReply::Skipped(skipped),
                Err(broadcast::error::RecvError::Closed) => break,
            };
            if send(&mut writer, &reply).await.is_err() {
                return;
            }
        }
    }
    let _ = send(&mut writer, &LogsReply::End).await;
}

/// One line of worker output, as a `logs` stream carries it.
fn log_line(line: &crate::primary::OutputLine) -> LogsReply {
    LogsReply::Line(LogLine::new(
        line.time,
        line.slot,
        line.pid,
        line.stream,
        line.line.as_str(),
    ))
}

/// Writes one reply line.
async fn send(writer: &mut OwnedWriteHalf, reply: &impl Serialize) -> io::Result<()> {
    let mut text = serde_json::to_string(reply).map_err(io::Error::other)?;
    text.push('\n');
    writer.write_all(text.as_bytes()).await
}

/// A reply, as JSON: `{"ok":true, ..answer}` or `{"ok":false,"error":...}`.
fn reply<T: Serialize>(answer: std::result::Result<T, Failure>) -> Value {
    serde_json::to_value(Reply::from(answer)).unwrap_or(Value::Null)
}

/// A failure reply, as JSON.
fn failed(failure: Failure) -> Value {
    reply::<Done>(Err(failure))
}

/// The request on one line, or the error reply for a line that is none.
fn parse(line: &str) -> std::result::Result<Request, Value> {
    let line: RequestLine = serde_json::from_str(line)
        .map_err(|e| failed(Failure::new(format!("bad request: {e}"))))?;
    if line.v != CONTROL_VERSION {
        return Err(failed(Failure::new(format!(
            "unsupported control protocol version {}; this primary speaks {CONTROL_VERSION}",
            line.v
        ))));
    }
    Ok(line.request)
}

/// The reply to one request (`logs` is answered as a stream by [`logs`]).
async fn answer(core: &Core, request: Request) -> Value {
    let failed_at = |slot: usize, reason| {
        Failure::at_slot(slot, format!("slot {slot}: the new worker {reason}"))
    };
    match request {
        Request::Status => reply(Ok(crate::primary::ops::stats::snapshot(
            core,
            &core.traffic(),
        ))),
        Request::Reload => reply(match reload::reload(core).await {
            Ok(()) => Ok(Done::default()),
            Err(Error::ReloadFailed { slot, reason }) => Err(failed_at(slot, reason)),
            Err(e) => Err(Failure::new(e.to_string())),
        }),
        Request::Scale { workers, delta } => {
            let target = match (workers, delta) {
                (Some(n), None) => Some(n as i64),
                (None, Some(d)) => Some(core.target() as i64 + d),
                _ => None,
            };
            reply(match target {
                Some(n) if n >= 1 => supervisor::scale(core, n as usize)
                    .map(|()| Scaled::new(n as usize))
                    .map_err(|e| Failure::new(e.to_string())),
                Some(n) => Err(Failure::new(format!(
                    "cannot scale to {n}: at least 1 worker"
                ))),
                None => Err(Failure::new("scale needs `workers` or `delta`")),
            })
        }
        Request::Restart { slot } => {
            if core.worker(slot).is_none() {
                return failed(Failure::new(format!("no worker in slot {slot}")));
            }
            reply(
                replace::replace(core, slot, Replacement::Reload, None)
                    .await
                    .map(|()| Done::default())
                    .map_err(|reason| failed_at(slot, reason)),
            )
        }
        Request::Upgrade => reply(
            upgrade::upgrade(core)
                .await
                .map(Upgraded::new)
                .map_err(|e| Failure::new(e.to_string())),
        ),
        Request::Stop { now } => {
            if now {
                shutdown::now(core);
            } else {
                shutdown::graceful(core);
            }
            reply(Ok(Done::default()))
        }
        Request::Send { slot, message } => reply(send_message(core, slot, &message)),
        Request::Logs { .. } => failed(Failure::new("logs is answered as a stream")),
    }
}

/// Queues `message` for the worker of `slot`, or for every connected worker.
fn send_message(
    core: &Core,
    slot: Option<usize>,
    message: &Value,
) -> std::result::Result<Sent, Failure> {
    let workers = match slot {
        Some(slot) => vec![core
            .worker(slot)
            .ok_or_else(|| Failure::new(format!("no worker in slot {slot}")))?],
        None => core.workers(),
    };
    let mut sent = 0;
    for worker in workers.iter().filter(|w| w.is_connected()) {
        match worker.send(message) {
            Ok(()) => sent += 1,
            Err(e) if slot.is_some() => return Err(Failure::new(e.to_string())),
            Err(_) => {}
        }
    }
    if slot.is_some() && sent == 0 {
        return Err(Failure::new("the worker is not connected"));
    }
    Ok(Sent::new(sent))
}
