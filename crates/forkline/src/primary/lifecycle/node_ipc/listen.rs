//! A Node worker's servers: `queryServer` (every `server.listen(...)` asks the primary), the
//! worker's `listening` and `close`. In shared, reuseport and steer modes the answer is a
//! listening socket the primary owns (the shared one, or the worker's own `SO_REUSEPORT` socket);
//! in round-robin mode it is no socket at all — the primary accepts, and the worker's server
//! gets its connections one `newconn` at a time (`newconn.rs`).

use std::os::fd::OwnedFd;
use std::sync::Arc;

use serde_json::{json, Value};

use super::Channel;
use crate::primary::event::Event;
use crate::primary::lifecycle::{ipc, readiness};
use crate::primary::options::Readiness;
use crate::primary::traffic::dispatch::sink::Sink;
use crate::primary::traffic::listeners::{BoundListener, ListenKey};
use crate::protocol::{Mode, SocketKind};

/// What a `queryServer` gets: a listener of the primary's, and the socket of it the worker
/// listens on — none in round-robin, where the primary accepts.
struct Answer {
    listener: Arc<BoundListener>,
    socket: Option<Arc<OwnedFd>>,
}

impl Channel<'_> {
    /// `server.listen(...)` in the worker: the listening socket for it, a round-robin server,
    /// or Node's errno.
    pub(super) async fn query_server(&mut self, message: &Value, seq: Value) {
        let key = server_key(message);
        let answer = match self.answer(message) {
            Ok(answer) => answer,
            Err(errno) => {
                let reply = self
                    .cluster_reply(json!({"errno": -errno, "key": key, "ack": seq, "data": null}));
                self.send(reply, None).await;
                return;
            }
        };
        let Answer { listener, socket } = answer;
        listener.hold(self.worker.unique_id());
        self.keys.insert(listener.id, key.clone());
        // The first worker's data (a TLS server's ticket keys) for every worker, as Node's
        // primary gives it: a session ticket from one worker then resumes on another.
        let data = {
            let mut first = listener.node_data.lock().unwrap();
            if first.is_null() {
                *first = message["data"].clone();
            }
            first.clone()
        };
        match socket {
            Some(socket) => {
                let inner =
                    self.cluster_reply(json!({"errno": 0, "key": key, "ack": seq, "data": data}));
                let kind = if message["addressType"].as_str().is_some() {
                    "dgram.Native"
                } else {
                    "net.Native"
                };
                let line = json!({"cmd": "NODE_HANDLE", "type": kind, "msg": inner});
                self.servers.insert(key, listener);
                self.send(line, Some(socket)).await;
            }
            None => {
                // Round-robin: no handle; the worker's server is a stand-in whose address is
                // `sockname` (none for a Unix path, as in Node).
                let mut reply = json!({"errno": null, "key": key, "ack": seq, "data": data});
                if let Some(sockname) = sockname(&listener.local) {
                    reply["sockname"] = sockname;
                }
                let reply = self.cluster_reply(reply);
                self.servers.insert(key, listener);
                self.send(reply, None).await;
            }
        }
    }

    /// The forkline listener for a `queryServer` and the socket this worker gets of it; an
    /// errno when it cannot be bound.
    fn answer(&self, message: &Value) -> Result<Answer, i32> {
        let port = message["port"].as_i64().unwrap_or(0);
        let address = message["address"].as_str().unwrap_or("");
        let (kind, address) = match message["addressType"].as_i64() {
            Some(-1) => (SocketKind::Unix, address.to_string()),
            _ if message["addressType"].as_str().is_some() => {
                (SocketKind::Udp, host_port(address, port, message))
            }
            _ => (SocketKind::Tcp, host_port(address, port, message)),
        };
        let index = if port == 0 {
            message["index"].as_u64().unwrap_or(0) as u32
        } else {
            0
        };
        let mode = crate::primary::traffic::steering::effective(
            self.core,
            ipc::effective_mode(kind, self.core.opts().mode),
        );
        // `listen({fd: N})`: the Nth socket forkline passed from fd 3 (LISTEN_FDS), as it is
        // without Node's channel; any other fd names nothing of the primary's (EBADF).
        if let Some(fd) = message["fd"].as_i64().filter(|fd| *fd >= 0) {
            let listener = usize::try_from(fd - 3)
                .ok()
                .and_then(|at| self.core.prebound().get(at))
                .ok_or(libc::EBADF)?
                .clone();
            return self.socket_of(listener, mode);
        }
        // A `--listen` address bound up front serves a Node listen on its port.
        let prebound = self.core.prebound().iter().find(|l| {
            l.kind == kind && kind != SocketKind::Unix && port > 0 && port_of(&l.local) == port
        });
        let listener = match prebound {
            Some(listener) => listener.clone(),
            None => {
                let key = ListenKey {
                    kind,
                    address: address.clone(),
                    mode,
                    index,
                };
                match self.core.listeners().get_or_bind(key) {
                    Ok((listener, fresh)) => {
                        if fresh {
                            tracing::info!(address = %listener.local, mode = mode.as_str(), "listening");
                            if mode == Mode::RoundRobin {
                                crate::primary::traffic::dispatch::accept::start_accepting(
                                    self.core, &listener,
                                );
                            }
                        }
                        listener
                    }
                    Err(e) => {
                        tracing::error!(worker = self.worker.id(), %address, error = %e, "listen failed");
                        return Err(ipc::bind_errno(&e));
                    }
                }
            }
        };
        self.socket_of(listener, mode)
    }

    /// The socket of `listener` this worker gets, non-blocking: Node builds its handle from
    /// the fd as it is, and its accept loop blocks in `accept` on a blocking one (the worker
    /// then serves nothing more and never finishes a `disconnect`). None in round-robin mode.
    fn socket_of(&self, listener: Arc<BoundListener>, mode: Mode) -> Result<Answer, i32> {
        if mode == Mode::RoundRobin && listener.kind != SocketKind::Udp {
            return Ok(Answer {
                listener,
                socket: None,
            });
        }
        let socket = listener
            .socket_for(self.worker.id())
            .map_err(|e| ipc::bind_errno(&e))?;
        socket2::SockRef::from(socket.as_ref())
            .set_nonblocking(true)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EINVAL))?;
        Ok(Answer {
            listener,
            socket: Some(socket),
        })
    }

    /// The worker listens: `listening`, round-robin handoffs, steering, readiness.
    pub(super) fn listening(&mut self, message: &Value) {
        let Some(listener) = self.server_of(message) else {
            return;
        };
        if self.round_robin(&listener) {
            self.core.dispatcher().add_target(
                self.worker,
                Sink::Node(self.handoffs.clone()),
                listener.id,
            );
        }
        crate::primary::traffic::steering::listening(self.worker, &listener);
        self.core.emit(Event::Listening {
            worker: self.worker.clone(),
            address: listener.local.clone(),
        });
        if self.core.opts().readiness == Readiness::Listen {
            readiness::set_ready(self.core, self.worker);
        }
    }

    /// The worker closed a server: it gets no more of its connections.
    pub(super) fn close(&mut self, message: &Value) {
        let Some(key) = message["key"].as_str() else {
            return;
        };
        if let Some(listener) = self.servers.remove(key) {
            self.keys.remove(&listener.id);
            self.core.dispatcher().leave(self.worker, listener.id);
            if !self.servers.values().any(|l| l.id == listener.id) {
                let released = self
                    .core
                    .listeners()
                    .release_closed(self.worker.unique_id(), listener.id);
                self.core.forget_listeners(released);
            }
        }
    }

    /// The server a `listening` message is about (it carries no key: see `listening_keys`).
    fn server_of(&self, message: &Value) -> Option<Arc<BoundListener>> {
        listening_keys(message)
            .iter()
            .find_map(|key| self.servers.get(key))
            .cloned()
    }

    /// True when the worker's server of `listener` takes `newconn`s (the primary accepts).
    fn round_robin(&self, listener: &BoundListener) -> bool {
        listener.kind != SocketKind::Udp && listener.mode == Mode::RoundRobin
    }
}

/// Node's key of a server: unique among the worker's live servers.
pub(super) fn server_key(message: &Value) -> String {
    let part = |name: &str| match &message[name] {
        Value::Null => "null".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    format!(
        "{}:{}:{}:{}:{}",
        part("address"),
        part("port"),
        part("addressType"),
        part("fd"),
        part("index")
    )
}

/// The keys a `listening` message may name its server by: Node sends the server's
/// `queryServer` again with the port it got, so the port the query asked for was that one, 0
/// (`listen(0)`), or none (`listen({fd})`).
fn listening_keys(message: &Value) -> [String; 3] {
    [message["port"].clone(), json!(0), Value::Null].map(|port| {
        let mut asked = message.clone();
        asked["port"] = port;
        server_key(&asked)
    })
}

/// `host:port` for a TCP or UDP listen: any address when none was given (IPv6 dual-stack for
/// Node's default, as Node's own primary binds).
fn host_port(address: &str, port: i64, message: &Value) -> String {
    let port = port.max(0);
    match address {
        "" | "::" if message["addressType"] == json!("udp4") => format!("0.0.0.0:{port}"),
        "" | "::" => format!("[::]:{port}"),
        "0.0.0.0" => format!("0.0.0.0:{port}"),
        host if host.contains(':') => format!("[{host}]:{port}"),
        host => format!("{host}:{port}"),
    }
}

/// The port of a `host:port` address.
fn port_of(address: &str) -> i64 {
    address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(-1)
}

/// A round-robin server's address as Node's `server.address()` gives it; none for a Unix path.
fn sockname(local: &str) -> Option<Value> {
    let address: std::net::SocketAddr = local.parse().ok()?;
    let family = if address.is_ipv4() { "IPv4" } else { "IPv6" };
    Some(json!({"address": address.ip().to_string(), "family": family, "port": address.port()}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_addresses_follow_node() {
        let query =
            json!({"address": null, "port": 3000, "addressType": 4, "fd": null, "index": 0});
        assert_eq!(server_key(&query), "null:3000:4:null:0");
        assert_eq!(host_port("", 3000, &query), "[::]:3000");
        assert_eq!(host_port("127.0.0.1", 3000, &query), "127.0.0.1:3000");
        assert_eq!(host_port("::1", 3000, &query), "[::1]:3000");
        assert_eq!(port_of("127.0.0.1:3000"), 3000);
        assert_eq!(port_of("[::]:80"), 80);
    }

    #[test]
    fn a_listening_finds_the_key_its_query_got() {
        let queries = [
            json!({"address": null, "port": 3000, "addressType": 4, "fd": null, "index": 0}),
            json!({"address": "::1", "port": 0, "addressType": 6, "fd": null, "index": 1}),
            json!({"address": "/run/app.sock", "port": -1, "addressType": -1, "index": 0}),
            json!({"address": null, "port": null, "addressType": null, "fd": 3, "index": 0}),
        ];
        for (query, got) in queries.iter().zip([3000, 41023, -1, 8080]) {
            let mut listening = query.clone();
            listening["act"] = json!("listening");
            listening["port"] = json!(got);
            assert!(
                listening_keys(&listening).contains(&server_key(query)),
                "{query} {listening}"
            );
        }
        let other =
            json!({"address": null, "port": 3001, "addressType": 4, "fd": null, "index": 0});
        assert_ne!(listening_keys(&queries[0])[0], server_key(&other));
    }

    #[test]
    fn a_round_robin_server_has_nodes_sockname() {
        assert_eq!(
            sockname("[::]:3000").unwrap(),
            json!({"address": "::", "family": "IPv6", "port": 3000})
        );
        assert_eq!(
            sockname("127.0.0.1:80").unwrap(),
            json!({"address": "127.0.0.1", "family": "IPv4", "port": 80})
        );
        assert_eq!(sockname("/tmp/app.sock"), None);
    }
}
