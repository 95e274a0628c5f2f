//! Round-robin for a Node worker: the dispatcher's connections go to its server as Node's
//! `newconn` (a `NODE_HANDLE` carrying the accepted socket), one at a time (the dispatcher gives
//! a Node worker a window of one), and the worker answers `accepted`. The primary keeps its copy
//! of each connection until then: `accepted: true` closes it (the worker's is the last one),
//! `accepted: false` sends it to another worker, and a worker that dies or closes its channel
//! first gives back every connection it did not accept — none hangs with a dead worker, which
//! is where Node's own primary leaks them.

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::Channel;
use crate::primary::traffic::dispatch::conn::Conn;
use crate::primary::traffic::dispatch::sink::Handoff;

/// A connection sent with `newconn` and not answered yet.
pub(super) struct Handed {
    /// The dispatcher's seq of it.
    seq: u64,
    listener: u64,
    peer: Option<SocketAddr>,
    accepted: Instant,
    refused_by: Option<u64>,
    /// The primary's copy (another sits in the message in flight until the worker's ACK).
    fd: Arc<OwnedFd>,
}

impl Handed {
    fn into_conn(self) -> Option<Conn> {
        let fd = Arc::try_unwrap(self.fd)
            .or_else(|shared| shared.try_clone())
            .map_err(|e| tracing::warn!(error = %e, "a connection could not be taken back"))
            .ok()?;
        Some(Conn {
            listener: self.listener,
            fd,
            peer: self.peer,
            accepted: self.accepted,
            refused_by: self.refused_by,
        })
    }
}

impl Channel<'_> {
    /// Sends the dispatcher's `handoff` to the worker's server as `newconn`; a server the
    /// worker has closed since gives it straight back.
    pub(super) async fn newconn(&mut self, handoff: Handoff) {
        let Handoff { seq, conn } = handoff;
        let Some(key) = self.keys.get(&conn.listener).cloned() else {
            self.core
                .dispatcher()
                .not_accepted(self.worker, conn, false);
            return;
        };
        let fd = Arc::new(conn.fd);
        let message = self.cluster_reply(json!({"act": "newconn", "key": key}));
        let node_seq = self.seq;
        self.handed.insert(
            node_seq,
            Handed {
                seq,
                listener: conn.listener,
                peer: conn.peer,
                accepted: conn.accepted,
                refused_by: conn.refused_by,
                fd: fd.clone(),
            },
        );
        let line = json!({"cmd": "NODE_HANDLE", "type": "net.Native", "msg": message});
        self.send(line, Some(fd)).await;
    }

    /// The worker's answer to a `newconn`: `{ack: <its seq>, accepted}`.
    pub(super) fn settle(&mut self, message: &Value) {
        let (Some(ack), Some(accepted)) = (message["ack"].as_u64(), message["accepted"].as_bool())
        else {
            return;
        };
        let Some(handed) = self.handed.remove(&ack) else {
            return;
        };
        if accepted {
            // Dropping `handed` closes the primary's copy.
            self.core.dispatcher().ack(self.worker, &[handed.seq], None);
            return;
        }
        let server_open = self.keys.contains_key(&handed.listener);
        if let Some(conn) = handed.into_conn() {
            self.core
                .dispatcher()
                .not_accepted(self.worker, conn, server_open);
        }
    }

    /// A `newconn` whose socket the worker kept refusing: the connection goes to another
    /// worker (for any other socket, nothing to do).
    pub(super) fn give_up_handoff(&mut self, socket: &Arc<OwnedFd>) {
        let Some(seq) = self
            .handed
            .iter()
            .find(|(_, handed)| Arc::ptr_eq(&handed.fd, socket))
            .map(|(seq, _)| *seq)
        else {
            return;
        };
        // As a refusal: not back to this worker, closed if no other one serves.
        if let Some(conn) = self.handed.remove(&seq).and_then(Handed::into_conn) {
            self.core.dispatcher().not_accepted(self.worker, conn, true);
        }
    }

    /// The channel is closed or the worker gone: what it was sent and did not accept, and what
    /// waits for it in `queue`, goes to other workers (once the dispatcher stopped sending).
    pub(super) fn give_back_all(&mut self, queue: &mut UnboundedReceiver<Handoff>) {
        // The messages not written yet hold copies of their sockets.
        self.queued.clear();
        self.in_flight = None;
        let mut handed: Vec<(u64, Handed)> = self.handed.drain().collect();
        handed.sort_by_key(|(node_seq, _)| *node_seq);
        self.core.dispatcher().take_back(self.worker, || {
            let mut conns: Vec<Conn> = handed
                .into_iter()
                .filter_map(|(_, handed)| handed.into_conn())
                .collect();
            while let Ok(handoff) = queue.try_recv() {
                conns.push(handoff.conn);
            }
            conns
        });
    }
}
