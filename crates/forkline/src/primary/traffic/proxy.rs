//! Proxy mode: every worker listens on its own loopback port (given in `PORT`); the primary
//! accepts on the public address and relays bytes to a worker that is up. Works with programs
//! that know nothing of fds. A worker is up once its port accepts; new connections skip workers
//! that are down, and a worker that refuses is skipped for the next one.
//!
//! Where the kernel allows it, the relay is only the fallback: kernel steering (`lookup/`)
//! sends each new connection straight to the listener of a worker in turn, and this table
//! decides who is in turn — the same workers the relay would choose (up, not stopped, taking
//! connections), kept in step on every change (`sync`).
//!
//! For monitoring it counts connections accepted, handed off (connected to a worker's port)
//! and re-dispatched (refused by a worker, so the next one got them) in relaxed atomics, one
//! add per connection beside a task spawn, a connect and a relay; the connections in flight at
//! a worker are its open relays, which it counts anyway.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::primary::handle::WorkerHandle;
use crate::primary::lifecycle::notice::WorkerNotice;
use crate::primary::options::{sticky_index, Balance};
use crate::primary::traffic::counters::{AcceptErrorKind, Traffic};
use crate::primary::traffic::lookup::{self, KernelSteering};
use crate::protocol::SocketKind;

/// How long a retiring kernel-steered worker is given for handshakes steered to it before it
/// left the turns to complete, before its queue is looked at.
const HANDSHAKE_SETTLE: Duration = Duration::from_millis(250);

/// How long a connect to a worker's port may take before trying another worker.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Relay buffer per direction.
const RELAY_BUFFER: usize = 64 * 1024;

struct Backend {
    handle: WorkerHandle,
    port: u16,
    up: bool,
    /// The worker process is stopped (SIGSTOP, a debugger): its port still completes
    /// handshakes in the kernel, but nothing would answer, so it gets no new connection.
    stopped: bool,
    active: Arc<AtomicUsize>,
}

impl Backend {
    /// True when new connections may go to it: up, running, taking connections.
    fn serves(&self) -> bool {
        self.up && !self.stopped && self.handle.takes_connections()
    }
}

/// The workers the proxy relays to, and the port of each slot.
pub(crate) struct ProxyTable {
    backends: Mutex<BTreeMap<u64, Backend>>,
    /// The port of each worker process (by unique id). A replacement gets a new port, since
    /// during a reload or recycle the old worker still listens on its own.
    ports: Mutex<HashMap<u64, u16>>,
    cursor: AtomicUsize,
    /// How long a client waits for some worker to be up before it is closed.
    queue_timeout: Duration,
    counters: Counters,
    /// Kernel steering, when it could start, with the public port it steers.
    kernel: OnceLock<(KernelSteering, u16)>,
    /// This primary stopped accepting (shutdown, or a new primary took over): nobody is in turn.
    kernel_stopped: AtomicBool,
}

/// What the proxy counts (see `Traffic`).
#[derive(Debug, Default)]
struct Counters {
    accepted: AtomicU64,
    handed_off: AtomicU64,
    redispatched: AtomicU64,
    accept_errors: [AtomicU64; AcceptErrorKind::ALL.len()],
}

impl ProxyTable {
    /// An empty table whose clients wait at most `queue_timeout` for a worker.
    pub(crate) fn new(queue_timeout: Duration) -> ProxyTable {
        ProxyTable {
            backends: Mutex::default(),
            ports: Mutex::default(),
            cursor: AtomicUsize::new(0),
            queue_timeout,
            counters: Counters::default(),
            kernel: OnceLock::new(),
            kernel_stopped: AtomicBool::new(false),
        }
    }

    /// Starts kernel steering of new connections to `public` (an IPv4 `HOST:PORT`): from now
    /// on a worker that is up is steered to, straight to its own listener.
    pub(crate) fn steer_in_kernel(&self, public: &str) -> io::Result<()> {
        let address: SocketAddr = public.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("not an address: {public}"),
            )
        })?;
        let SocketAddr::V4(v4) = address else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "an IPv6 public address (the workers listen on 127.0.0.1)",
            ));
        };
        let ip = (!v4.ip().is_unspecified()).then_some(*v4.ip());
        let steering = KernelSteering::start(lookup::program::PublicAddress {
            ip,
            port: v4.port(),
        })?;
        let _ = self.kernel.set((steering, v4.port()));
        // Workers up already (a new primary after an upgrade starts steering only once its
        // workers are ready): their listeners are taken now.
        let up: Vec<(WorkerHandle, u16)> = self
            .backends
            .lock()
            .unwrap()
            .values()
            .filter(|b| b.up)
            .map(|b| (b.handle.clone(), b.port))
            .collect();
        for (worker, port) in up {
            self.take_listener(&worker, port);
        }
        self.sync();
        Ok(())
    }

    /// True when new connections are steered in the kernel (else all are relayed).
    pub(crate) fn in_kernel(&self) -> bool {
        self.kernel.get().is_some()
    }

    /// This primary accepts no more: kernel steering stops (connections go to the listener,
    /// which a successor accepts on, or nobody).
    pub(crate) fn stop_steering(&self) {
        self.kernel_stopped.store(true, Ordering::Release);
        self.sync();
    }

    /// Puts in turn, in the kernel, exactly the workers the relay would choose now.
    pub(crate) fn sync(&self) {
        let Some((kernel, _)) = self.kernel.get() else {
            return;
        };
        if self.kernel_stopped.load(Ordering::Acquire) {
            kernel.set_turns(&[]);
            return;
        }
        let backends = self.backends.lock().unwrap();
        let mut up: Vec<&Backend> = backends.values().filter(|b| b.serves()).collect();
        up.sort_by_key(|b| b.handle.id());
        let ids: Vec<u64> = up.iter().map(|b| b.handle.unique_id()).collect();
        kernel.set_turns(&ids);
    }

    /// Takes the listener of a worker that is up into kernel steering; where it cannot be
    /// taken, that worker's connections are relayed (said once per worker).
    fn take_listener(&self, worker: &WorkerHandle, port: u16) {
        let Some((kernel, _)) = self.kernel.get() else {
            return;
        };
        let taken = lookup::take_listener(worker.pid(), port)
            .and_then(|socket| kernel.insert(worker.unique_id(), socket));
        if let Err(e) = taken {
            tracing::warn!(
                worker = worker.id(),
                pid = worker.pid(),
                error = %e,
                "proxy: could not take the worker's listener for kernel steering; its connections are relayed"
            );
        }
    }

    /// True while a relay to some worker is open.
    pub(crate) fn has_open_relays(&self) -> bool {
        self.backends
            .lock()
            .unwrap()
            .values()
            .any(|b| b.active.load(Ordering::Relaxed) > 0)
    }

    /// The counters as they are now, and each worker's open relays.
    pub(crate) fn traffic(&self) -> Traffic {
        let c = &self.counters;
        let mut traffic = Traffic {
            accepted: c.accepted.load(Ordering::Relaxed),
            handed_off: c.handed_off.load(Ordering::Relaxed),
            redispatched: c.redispatched.load(Ordering::Relaxed),
            in_flight: self
                .backends
                .lock()
                .unwrap()
                .iter()
                .map(|(key, b)| (*key, b.active.load(Ordering::Relaxed) as u64))
                .collect(),
            ..Traffic::default()
        };
        for (count, total) in c.accept_errors.iter().zip(&mut traffic.accept_errors) {
            *total = count.load(Ordering::Relaxed);
        }
        traffic
    }

    /// The loopback port for `worker`, chosen once (a port that was free a moment ago).
    pub(crate) fn port_for(&self, worker: &WorkerHandle) -> io::Result<u16> {
        let mut ports = self.ports.lock().unwrap();
        if let Some(port) = ports.get(&worker.unique_id()) {
            return Ok(*port);
        }
        let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = probe.local_addr()?.port();
        ports.insert(worker.unique_id(), port);
        Ok(port)
    }

    /// Registers a freshly started worker (down until its port accepts).
    pub(crate) fn add(&self, worker: &WorkerHandle, port: u16) {
        self.backends.lock().unwrap().insert(
            worker.unique_id(),
            Backend {
                handle: worker.clone(),
                port,
                up: false,
                stopped: false,
                active: Arc::new(AtomicUsize::new(0)),
            },
        );
    }

    /// Marks the worker up: it receives new connections (in the kernel, straight to its
    /// listener, once it takes connections).
    pub(crate) fn set_up(&self, worker: &WorkerHandle) {
        let port = match self.backends.lock().unwrap().get_mut(&worker.unique_id()) {
            Some(b) => {
                b.up = true;
                b.port
            }
            None => return,
        };
        self.take_listener(worker, port);
        self.sync();
    }

    /// Stops sending new connections to the worker.
    pub(crate) fn remove(&self, worker: &WorkerHandle) {
        self.backends.lock().unwrap().remove(&worker.unique_id());
        if let Some((kernel, _)) = self.kernel.get() {
            kernel.remove(worker.unique_id());
        }
        if worker.is_dead() {
            self.ports.lock().unwrap().remove(&worker.unique_id());
        }
    }

    /// Stops sending new connections to the worker and waits (up to `grace`) until the
    /// connections it is serving have finished, so stopping it drops none: its relays, and,
    /// with kernel steering, the connections it accepted itself or has yet to accept.
    pub(crate) async fn retire(&self, worker: &WorkerHandle, grace: Duration) {
        let (active, port) = {
            let mut backends = self.backends.lock().unwrap();
            match backends.get_mut(&worker.unique_id()) {
                Some(backend) => {
                    backend.up = false;
                    (backend.active.clone(), backend.port)
                }
                None => return,
            }
        };
        self.sync();
        let direct = self.kernel.get().map(|(_, public)| *public);
        let pid = worker.pid();
        // `/proc/net/tcp` is read off the runtime's threads (it walks every TCP socket).
        let serving = move |public: u16| async move {
            tokio::task::spawn_blocking(move || lookup::serving(pid, port, public))
                .await
                .unwrap_or(false)
        };
        let deadline = tokio::time::Instant::now() + grace;
        if direct.is_some() {
            // A handshake steered to it just before it left the turns completes a round trip
            // later (a SYN_RECV cannot be told apart by listener in /proc/net/tcp).
            tokio::time::sleep(HANDSHAKE_SETTLE.min(grace)).await;
        }
        while tokio::time::Instant::now() < deadline {
            let busy = active.load(Ordering::Acquire) > 0
                || match direct {
                    Some(public) => serving(public).await,
                    None => false,
                };
            if !busy {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.remove(worker);
    }

    /// Looks at every worker's process state: a stopped one is skipped until it runs again.
    pub(crate) fn check_stopped(&self) {
        let mut backends = self.backends.lock().unwrap();
        for backend in backends.values_mut() {
            let stopped = process_stopped(backend.handle.pid());
            if stopped != backend.stopped {
                if stopped {
                    tracing::warn!(
                        worker = backend.handle.id(),
                        pid = backend.handle.pid(),
                        "worker is stopped; no new connections go to it"
                    );
                } else {
                    tracing::info!(worker = backend.handle.id(), "worker runs again");
                }
                backend.stopped = stopped;
            }
        }
        drop(backends);
        // Also catches every change of who takes connections (ready, draining, on trial).
        self.sync();
    }

    /// Candidates for a client, best first, by the balancing strategy.
    fn candidates(
        &self,
        balance: Balance,
        client: Option<IpAddr>,
    ) -> Vec<(u16, WorkerHandle, Arc<AtomicUsize>)> {
        let backends = self.backends.lock().unwrap();
        let mut up: Vec<&Backend> = backends.values().filter(|b| b.serves()).collect();
        if up.is_empty() {
            return Vec::new();
        }
        up.sort_by_key(|b| b.handle.id());
        let start = match balance {
            Balance::RoundRobin => self.cursor.fetch_add(1, Ordering::Relaxed) % up.len(),
            Balance::IpHash => sticky_index(client, up.len()),
            Balance::LeastConn => up
                .iter()
                .enumerate()
                .min_by_key(|(_, b)| b.active.load(Ordering::Relaxed))
                .map_or(0, |(i, _)| i),
        };
        (0..up.len())
            .map(|i| {
                let b = up[(start + i) % up.len()];
                (b.port, b.handle.clone(), b.active.clone())
            })
            .collect()
    }
}

/// Registers a freshly started worker with the proxy and watches its port: it is up once the
/// port accepts, and its supervision loop hears so (`WorkerNotice::PortUp`: with
/// `Readiness::Listen`, that is when it is ready).
pub(crate) fn watch_worker(table: &Arc<ProxyTable>, worker: &WorkerHandle) -> io::Result<()> {
    let port = table.port_for(worker)?;
    table.add(worker, port);
    let (table, worker) = (table.clone(), worker.clone());
    crate::primary::task::spawn("proxy-port", async move {
        if wait_port(port, &worker).await {
            table.set_up(&worker);
            worker.notice(WorkerNotice::PortUp);
        }
    });
    Ok(())
}

/// How often the proxy looks for stopped workers.
const STOPPED_CHECK: Duration = Duration::from_millis(250);

/// True when process `pid` is stopped (state `T`, or `t` under a debugger).
fn process_stopped(pid: u32) -> bool {
    crate::primary::procfs::stat(pid).is_some_and(|s| matches!(s.state, 'T' | 't'))
}

/// Starts the proxy's check for stopped workers.
pub(crate) fn start_stopped_checks(table: &Arc<ProxyTable>, mut stop: watch::Receiver<bool>) {
    let table = table.clone();
    crate::primary::task::spawn("proxy-stopped", async move {
        let mut tick = tokio::time::interval(STOPPED_CHECK);
        loop {
            tokio::select! {
                _ = tick.tick() => table.check_stopped(),
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    });
}

/// Starts kernel steering for `listener` (the first TCP one) where it is on and possible, says
/// once which path connections take, and stops it when this primary stops accepting.
pub(crate) fn start_kernel_steering(
    table: &Arc<ProxyTable>,
    opts: &crate::primary::options::ClusterOptions,
    mut stop: watch::Receiver<bool>,
    listener: &crate::primary::traffic::listeners::BoundListener,
) {
    let balance = opts.balance;
    if !opts.proxy_in_kernel {
        return;
    }
    if opts.max_requests.is_some() {
        tracing::info!(
            "proxy: --max-requests counts the connections the primary relays; relaying every connection (no kernel steering)"
        );
        return;
    }
    if balance != Balance::RoundRobin {
        tracing::info!(
            balance = balance.as_str(),
            "proxy: the primary picks each connection's worker (kernel steering is round-robin only); relaying"
        );
        return;
    }
    match table.steer_in_kernel(&listener.local) {
        Ok(()) => tracing::info!(
            address = %listener.local,
            "proxy: new connections go straight to the workers' own listeners (kernel steering, SK_LOOKUP); the relay takes what it misses"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "proxy: kernel steering unavailable; relaying every connection");
            return;
        }
    }
    let table = table.clone();
    crate::primary::task::spawn("proxy-kernel-stop", async move {
        let _ = stop.wait_for(|s| *s).await;
        table.stop_steering();
    });
}

/// Starts the proxy's accept loop for a listener bound up front.
pub(crate) fn start_accepting(
    table: &Arc<ProxyTable>,
    balance: Balance,
    stop: watch::Receiver<bool>,
    listener: &crate::primary::traffic::listeners::BoundListener,
) {
    if let Some(socket) = listener.socket.clone() {
        let table = table.clone();
        let kind = listener.kind;
        crate::primary::task::spawn("proxy-accept", async move {
            if let Err(e) = accept_loop(table, balance, kind, socket, stop).await {
                tracing::error!(error = %e, "proxy accept loop failed");
            }
        });
    }
}

/// Waits until `port` on loopback accepts; false if the worker dies first.
pub(crate) async fn wait_port(port: u16, worker: &WorkerHandle) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if worker.is_dead() {
            return false;
        }
        if let Ok(probe) = TcpStream::connect(addr).await {
            if !connected_to_itself(&probe) {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True for a TCP self-connection: a connect to a loopback port in the ephemeral range with
/// nothing listening succeeds when the kernel happens to pick that same port as the source
/// (a simultaneous open with itself). A worker port probed 20 times a second until it listens
/// would, now and then, look up without a listener — and the probe would hold the port the
/// worker is about to bind.
fn connected_to_itself(stream: &TcpStream) -> bool {
    matches!((stream.local_addr(), stream.peer_addr()), (Ok(local), Ok(peer)) if local == peer)
}

/// Accepts on the public socket until `stop`, relaying each connection to a worker.
pub(crate) async fn accept_loop(
    table: Arc<ProxyTable>,
    balance: Balance,
    kind: SocketKind,
    socket: Arc<OwnedFd>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let dup = socket.try_clone()?;
    socket2::SockRef::from(&dup).set_nonblocking(true)?;
    match kind {
        SocketKind::Tcp => {
            let listener = tokio::net::TcpListener::from_std(std::net::TcpListener::from(dup))?;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                };
                match accepted {
                    Ok((client, peer)) => {
                        table.counters.accepted.fetch_add(1, Ordering::Relaxed);
                        let _ = client.set_nodelay(true);
                        crate::primary::task::spawn(
                            "relay",
                            relay_tcp(table.clone(), balance, client, peer.ip()),
                        );
                    }
                    Err(e) => accept_error(&table, e).await,
                }
            }
        }
        SocketKind::Unix => {
            let listener =
                tokio::net::UnixListener::from_std(std::os::unix::net::UnixListener::from(dup))?;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = stop.wait_for(|s| *s) => return Ok(()),
                };
                match accepted {
                    Ok((client, _)) => {
                        table.counters.accepted.fetch_add(1, Ordering::Relaxed);
                        crate::primary::task::spawn(
                            "relay",
                            relay_copy(table.clone(), balance, client),
                        );
                    }
                    Err(e) => accept_error(&table, e).await,
                }
            }
        }
        SocketKind::Udp => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "proxy mode relays TCP and Unix stream listeners, not UDP",
        )),
    }
}

async fn accept_error(table: &ProxyTable, e: io::Error) {
    table.counters.accept_errors[AcceptErrorKind::of(&e).index()].fetch_add(1, Ordering::Relaxed);
    tracing::warn!(error = %e, "proxy accept failed");
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Picks a worker for a client and connects to its port, trying the next one on refusal.
/// Holds the client briefly while no worker is up (all restarting at once). Returns the upstream
/// connection and the worker's active-connection counter, already incremented.
async fn connect_upstream(
    table: &ProxyTable,
    balance: Balance,
    peer: Option<IpAddr>,
) -> Option<(TcpStream, Arc<AtomicUsize>)> {
    let deadline = tokio::time::Instant::now() + table.queue_timeout;
    let mut candidates = table.candidates(balance, peer);
    while candidates.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        candidates = table.candidates(balance, peer);
    }
    for (tried, (port, handle, active)) in candidates.into_iter().enumerate() {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        // Counted before connecting, so a worker being retired waits for this connection.
        active.fetch_add(1, Ordering::AcqRel);
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
            // A self-connection (the worker's port closed, see `connected_to_itself`) would
            // echo the client's bytes back to it: not a worker.
            Ok(Ok(upstream)) if !connected_to_itself(&upstream) => {
                let _ = upstream.set_nodelay(true);
                handle.count_connections(1);
                let counters = &table.counters;
                counters.handed_off.fetch_add(1, Ordering::Relaxed);
                if tried > 0 {
                    counters.redispatched.fetch_add(1, Ordering::Relaxed);
                }
                return Some((upstream, active));
            }
            _ => {
                active.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
    tracing::warn!("proxy: no worker is up; closing the connection");
    None
}

/// Relays a TCP client with splice (zero-copy).
async fn relay_tcp(table: Arc<ProxyTable>, balance: Balance, client: TcpStream, peer: IpAddr) {
    if let Some((upstream, active)) = connect_upstream(&table, balance, Some(peer)).await {
        let _ = crate::primary::traffic::splice::relay(&client, &upstream).await;
        active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Relays a Unix-socket client by copying.
async fn relay_copy<C>(table: Arc<ProxyTable>, balance: Balance, mut client: C)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if let Some((mut upstream, active)) = connect_upstream(&table, balance, None).await {
        let _ = tokio::io::copy_bidirectional_with_sizes(
            &mut client,
            &mut upstream,
            RELAY_BUFFER,
            RELAY_BUFFER,
        )
        .await;
        active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_self_connection_is_not_a_listening_worker() {
        // Connect from port P to port P with nothing listening: the kernel joins the socket
        // to itself, as a probe can by chance.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(addr).unwrap();
        let itself = socket.connect(addr).await.expect("a self-connection");
        assert!(connected_to_itself(&itself));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let other = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        assert!(!connected_to_itself(&other));
    }
}
