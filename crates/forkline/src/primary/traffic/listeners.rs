//! The sockets the primary binds for its workers: each address once (keyed like Node: kind,
//! address, mode, so `listen(0)` gives every worker the same port), plus one SO_REUSEPORT socket
//! per worker slot in `reuseport` and `steer` modes. Bind errors name the address.
//!
//! A reuseport group keeps at least one socket while its listener lives: when a slot's socket
//! is released and it is the group's last, it waits (still listening) for the next worker that
//! accepts on the address, so the port stays bound and its queue waits instead of being reset.
//! Every reuseport TCP socket is set up by the cluster's `Migrator` as it starts listening, so
//! that a closing socket's queue can move to the others (`migration.rs`). In steer mode, by
//! its listener's `SteerGroup` instead (`steer.rs`), whose program also migrates; the group's
//! socket array holds the sockets of the slots whose worker is ready.
//!
//! A Unix listener is shared in every mode where workers accept (AF_UNIX has no SO_REUSEPORT:
//! a second socket on the path could not be bound). A Unix path longer than `sun_path` holds
//! (108 bytes: a relative path in a deep working directory, made absolute) is bound, checked
//! and connected to through `/proc/self/fd/DIRFD/NAME`, its directory opened with `O_PATH`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::error::{Error, Result};
use crate::primary::options::Balance;
use crate::primary::traffic::migration::{Migration, Migrator};
use crate::primary::traffic::steer::group::{SteerGroup, Steerer};
use crate::protocol::{Mode, SocketKind};

/// Backlog for every listening socket (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

/// The size of `sockaddr_un.sun_path`: a path must be shorter (it ends with a NUL).
const SUN_PATH: usize = 108;

/// What a Unix socket bound through its directory's descriptor is named by `getsockname`.
const PROC_FD_PREFIX: &str = "/proc/self/fd/";

/// How the primary sets up the sockets it binds.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BindOptions {
    /// TCP_NODELAY on TCP listeners: accepted connections inherit it, so a worker that writes
    /// a response in pieces is not held back by Nagle's algorithm (systemd's `NoDelay=`).
    pub nodelay: bool,
    /// Permissions for Unix socket files (`None`: as the umask leaves them).
    pub unix_mode: Option<u32>,
    /// Owner (uid, gid) for Unix socket files.
    pub unix_owner: Option<(u32, u32)>,
    /// How the queues of closing reuseport sockets are kept.
    pub migration: Migration,
    /// How steer mode's program picks a socket (round-robin or least-conn).
    pub balance: Balance,
}

/// How a reuseport TCP socket is set up once it listens.
#[derive(Clone, Copy)]
pub(crate) enum Prepare<'a> {
    /// So that its queue migrates when it closes (reuseport mode).
    Migrate(&'a Migrator),
    /// Joins its group's steering (steer mode): the program attached.
    Steer(&'a SteerGroup),
}

impl Prepare<'_> {
    fn apply(self, socket: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
        match self {
            Prepare::Migrate(migrator) => migrator.prepare(socket),
            Prepare::Steer(group) => group.prepare(socket),
        }
    }
}

/// What identifies one shared listener.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ListenKey {
    pub kind: SocketKind,
    pub address: String,
    pub mode: Mode,
    /// The worker's listen index: index 0 is shared by every worker; a worker's second open
    /// listener of an address is a listener of its own (Node's per-call handles).
    pub index: u32,
}

impl ListenKey {
    /// The key as the table keeps it: a Unix listener is shared where workers accept,
    /// SO_REUSEPORT meaning nothing for AF_UNIX (a per-slot socket could not be bound on a
    /// path that is taken), so `--mode reuseport -l unix:PATH` and a Node worker's
    /// `listen(PATH)` in reuseport or steer mode get the one socket.
    fn normalized(mut self) -> ListenKey {
        if self.kind == SocketKind::Unix && self.mode.socket_per_worker() {
            self.mode = Mode::Shared;
        }
        self
    }
}

/// One bound address and the sockets behind it.
#[derive(Debug)]
pub(crate) struct BoundListener {
    /// Id used in `listening` and `conns` messages.
    pub id: u64,
    pub kind: SocketKind,
    pub mode: Mode,
    /// The address as bound: the real port when 0 was asked for.
    pub local: String,
    /// The primary's socket: accepts in round-robin, is handed out in shared mode. `None` in
    /// reuseport mode, where the primary keeps no socket of the group for itself while a
    /// worker has one (a socket nobody accepts on would strand the connections the kernel
    /// hashes to it).
    pub socket: Option<Arc<OwnedFd>>,
    /// reuseport: a socket waiting for the next worker while no slot has one: the one bound
    /// first (it fixed the port), or the group's last when its slot was released.
    spare: Mutex<Option<Arc<OwnedFd>>>,
    /// reuseport: the socket of each worker slot, kept across immediate restarts so a
    /// replacement inherits the queue.
    per_slot: Mutex<HashMap<usize, Arc<OwnedFd>>>,
    /// How its sockets are set up (for the reuseport sockets bound later).
    options: BindOptions,
    /// Sets up its reuseport sockets so that their queues migrate.
    migrator: Arc<Migrator>,
    /// Steer mode: the group's maps and program (`None` in other modes, or when BPF was
    /// refused: its sockets are then set up as in reuseport mode).
    pub steer: Option<Arc<SteerGroup>>,
    /// Who holds it, which decides when it is released.
    lifetime: Mutex<Lifetime>,
    /// Set when it is released: its accept loop stops.
    pub closed: tokio::sync::watch::Sender<bool>,
    /// Node workers: the first `data` a worker's `queryServer` brought for it (a TLS server's
    /// ticket keys), given to every worker that listens on it, as Node's primary does.
    pub node_data: Mutex<serde_json::Value>,
}

/// Who holds a listener. It is released (its socket closed, its Unix file removed, so new
/// connections are refused rather than parked) when its last holder exits, unless that
/// worker's slot restarts: then it waits for the slot's next worker, and is released if that
/// one exits, or has been ready for the settle time, without listening on it. Listeners bound
/// up front are never released.
#[derive(Debug, Default)]
struct Lifetime {
    /// Workers (unique ids) that listened on it and have not exited.
    holders: HashSet<u64>,
    /// The slot whose next worker it waits for.
    awaiting: Option<usize>,
    /// Bound up front (or passed by the service manager): kept until shutdown.
    pinned: bool,
}

impl BoundListener {
    /// The socket a worker in `slot` should accept on (shared and reuseport modes).
    pub(crate) fn socket_for(&self, slot: usize) -> Result<Arc<OwnedFd>> {
        if let Some(socket) = &self.socket {
            return Ok(socket.clone());
        }
        let mut slots = self.per_slot.lock().unwrap();
        if let Some(sock) = slots.get(&slot) {
            return Ok(sock.clone());
        }
        let sock = match self.spare.lock().unwrap().take() {
            Some(waiting) => waiting,
            None => Arc::new(
                bind(self.kind, &self.local, Some(self.prepare()), self.options).map_err(
                    |source| Error::Listen {
                        address: self.local.clone(),
                        source,
                    },
                )?,
            ),
        };
        slots.insert(slot, sock.clone());
        Ok(sock)
    }

    /// How its per-slot sockets are set up.
    fn prepare(&self) -> Prepare<'_> {
        match &self.steer {
            Some(group) => Prepare::Steer(group),
            None => Prepare::Migrate(&self.migrator),
        }
    }

    /// Steer mode: worker `seq` of `slot` is ready (or, ready, has just listened on it): its
    /// slot's socket enters the group's socket array, if the worker accepts on it (it listened
    /// on it, or the listener was bound up front and passed at start).
    pub(crate) fn steer_ready(&self, slot: usize, seq: u64) {
        let Some(group) = &self.steer else {
            return;
        };
        {
            let lifetime = self.lifetime.lock().unwrap();
            if !lifetime.pinned && !lifetime.holders.contains(&seq) {
                return;
            }
        }
        let Some(socket) = self.per_slot.lock().unwrap().get(&slot).cloned() else {
            return;
        };
        crate::primary::traffic::steer::group::enter(group, slot, seq, &socket);
    }

    /// Steer mode with least-conn: worker `seq` of `slot` has `open` connections.
    pub(crate) fn steer_load(&self, slot: usize, seq: u64, open: u64) {
        if let Some(group) = &self.steer {
            group.report_load(slot, seq, open);
        }
    }

    /// A socket of this listener to hand to a new primary (`Cluster::upgrade`): the primary's
    /// own, or in reuseport mode one of the group's (the spare, else the lowest slot's).
    pub(crate) fn socket_to_pass(&self) -> Option<Arc<OwnedFd>> {
        if let Some(socket) = &self.socket {
            return Some(socket.clone());
        }
        if let Some(spare) = self.spare.lock().unwrap().as_ref() {
            return Some(spare.clone());
        }
        let slots = self.per_slot.lock().unwrap();
        let lowest = slots.keys().min()?;
        slots.get(lowest).cloned()
    }

    /// Forgets `slot`'s reuseport socket (its worker is gone and no immediate replacement
    /// follows): the primary closes its copy at once, so that once the worker's copy is closed
    /// too, the kernel moves its queued and half-open connections to the other sockets of the
    /// group if migration is on (see `migration.rs`), instead of holding them on a socket
    /// nobody accepts on. The group's last socket is kept as the spare instead: there is no
    /// other socket to move its queue to, and the next worker takes it.
    pub(crate) fn release_slot(&self, slot: usize) {
        if let Some(group) = &self.steer {
            // Out of the socket array first: the group keeps a copy of each socket in it.
            group.slot_released(slot);
        }
        let mut slots = self.per_slot.lock().unwrap();
        let Some(sock) = slots.remove(&slot) else {
            return;
        };
        if slots.is_empty() {
            let mut spare = self.spare.lock().unwrap();
            if spare.is_none() {
                *spare = Some(sock);
            }
        }
    }

    /// Records that worker `seq` listens on it.
    pub(crate) fn hold(&self, seq: u64) {
        let mut lifetime = self.lifetime.lock().unwrap();
        lifetime.holders.insert(seq);
        lifetime.awaiting = None;
    }

    /// Keeps it until shutdown (bound up front).
    pub(crate) fn pin(&self) {
        self.lifetime.lock().unwrap().pinned = true;
    }

    /// Worker `seq` closed its server on it: true when nothing holds it any more.
    fn unheld_after_close(&self, seq: u64) -> bool {
        let mut lifetime = self.lifetime.lock().unwrap();
        lifetime.holders.remove(&seq) && lifetime.holders.is_empty() && !lifetime.pinned
    }

    /// Worker `seq` of `slot` exited (and the slot restarts, or not): true when nothing holds
    /// the listener any more and nothing is on the way to.
    fn unheld_after_exit(&self, seq: u64, slot: usize, restarting: bool) -> bool {
        let mut lifetime = self.lifetime.lock().unwrap();
        if lifetime.pinned {
            return false;
        }
        let held = lifetime.holders.remove(&seq);
        if !lifetime.holders.is_empty() {
            return false;
        }
        if held {
            if restarting {
                lifetime.awaiting = Some(slot);
                return false;
            }
            return true;
        }
        // It waited for this worker, which exited without listening on it.
        lifetime.awaiting == Some(slot)
    }

    /// True when it waits only for the next worker of `slot`.
    fn awaits(&self, slot: usize) -> bool {
        let lifetime = self.lifetime.lock().unwrap();
        !lifetime.pinned && lifetime.holders.is_empty() && lifetime.awaiting == Some(slot)
    }
}

/// All listeners of a cluster.
#[derive(Debug)]
pub(crate) struct ListenerTable {
    /// How the sockets are set up.
    options: BindOptions,
    /// The cluster's one migration state (what `Cluster::reuseport_migration` reports).
    migrator: Arc<Migrator>,
    /// Whether steer mode's BPF could be loaded (what `Cluster::steering` reports).
    steerer: Steerer,
    by_key: Mutex<HashMap<ListenKey, Arc<BoundListener>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl ListenerTable {
    /// An empty table whose sockets are set up by `options`.
    pub(crate) fn new(options: BindOptions) -> Self {
        Self {
            options,
            migrator: Arc::new(Migrator::new(options.migration)),
            steerer: Steerer::new(options.balance),
            by_key: Mutex::default(),
            next_id: Default::default(),
        }
    }

    /// How the queues of closing reuseport sockets are kept, or `None` before the first
    /// reuseport TCP socket. Steer mode's program migrates (`Bpf`).
    pub(crate) fn migration(&self) -> Option<crate::control::MigrationStatus> {
        use crate::control::MigrationStatus;
        self.migrator
            .status()
            .or_else(|| (self.steerer.status() == Some(true)).then_some(MigrationStatus::Bpf))
    }

    /// Steer mode's state: whether BPF could be loaded.
    pub(crate) fn steerer(&self) -> &Steerer {
        &self.steerer
    }

    /// The listener for `key`, binding it on first use. The bool is true when it was just bound.
    pub(crate) fn get_or_bind(&self, key: ListenKey) -> Result<(Arc<BoundListener>, bool)> {
        let key = key.normalized();
        let mut table = self.by_key.lock().unwrap();
        if let Some(found) = table.get(&key) {
            return Ok((found.clone(), false));
        }
        let steer = self.steer_group(&key);
        let prepare = match (&steer, key.mode.socket_per_worker()) {
            (Some(group), _) => Some(Prepare::Steer(group)),
            (None, true) => Some(Prepare::Migrate(&self.migrator)),
            (None, false) => None,
        };
        let socket = bind(key.kind, &key.address, prepare, self.options).map_err(|source| {
            Error::Listen {
                address: key.address.clone(),
                source,
            }
        })?;
        let listener = self.insert(&mut table, key, socket, steer)?;
        Ok((listener, true))
    }

    /// Registers an already-bound socket (socket activation, an upgrade) under `key`. In steer
    /// mode the group's program is attached to it at once: it replaces the program of the
    /// primary that passed it, which steers only to that primary's workers.
    pub(crate) fn adopt(&self, key: ListenKey, socket: OwnedFd) -> Result<Arc<BoundListener>> {
        let key = key.normalized();
        let mut table = self.by_key.lock().unwrap();
        let steer = self.steer_group(&key);
        if let Some(group) = &steer {
            use std::os::fd::AsFd;
            group
                .prepare(socket.as_fd())
                .map_err(|source| Error::Listen {
                    address: key.address.clone(),
                    source,
                })?;
        }
        self.insert(&mut table, key, socket, steer)
    }

    /// A steering group for a new listener of `key`, in steer mode (TCP) when BPF works.
    fn steer_group(&self, key: &ListenKey) -> Option<Arc<SteerGroup>> {
        (key.mode == Mode::Steer && key.kind == SocketKind::Tcp)
            .then(|| self.steerer.group())
            .flatten()
    }

    fn insert(
        &self,
        table: &mut HashMap<ListenKey, Arc<BoundListener>>,
        key: ListenKey,
        socket: OwnedFd,
        steer: Option<Arc<SteerGroup>>,
    ) -> Result<Arc<BoundListener>> {
        let mut local = local_address(&socket, key.kind).map_err(|source| Error::Listen {
            address: key.address.clone(),
            source,
        })?;
        // Bound through its directory's descriptor (a long path): the path asked for is its
        // name (what the log shows, what is removed at the end).
        if key.kind == SocketKind::Unix && local.starts_with(PROC_FD_PREFIX) {
            local = key.address.clone();
        }
        let (socket, spare) = if key.mode.socket_per_worker() {
            (None, Some(Arc::new(socket)))
        } else {
            (Some(Arc::new(socket)), None)
        };
        let listener = Arc::new(BoundListener {
            id: self
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            kind: key.kind,
            mode: key.mode,
            local,
            socket,
            spare: Mutex::new(spare),
            per_slot: Mutex::new(HashMap::new()),
            options: self.options,
            migrator: self.migrator.clone(),
            steer,
            lifetime: Mutex::new(Lifetime::default()),
            closed: tokio::sync::watch::channel(false).0,
            node_data: Mutex::new(serde_json::Value::Null),
        });
        table.insert(key, listener.clone());
        Ok(listener)
    }

    /// Every listener.
    pub(crate) fn all(&self) -> Vec<Arc<BoundListener>> {
        self.by_key.lock().unwrap().values().cloned().collect()
    }

    /// Worker `seq` of `slot` exited: releases the listeners nothing holds any more (see
    /// `Lifetime`) and returns them.
    pub(crate) fn release_after_exit(
        &self,
        seq: u64,
        slot: usize,
        restarting: bool,
    ) -> Vec<Arc<BoundListener>> {
        for listener in self.all() {
            if let Some(group) = &listener.steer {
                group.worker_gone(slot, seq);
            }
        }
        self.release_where(|l| l.unheld_after_exit(seq, slot, restarting))
    }

    /// Worker `seq` closed its server on listener `id` (a Node worker's `close`): it holds it no
    /// more, and a listener nobody holds (nor pinned) is released — its port free again, as
    /// Node's primary frees a handle its last worker removed.
    pub(crate) fn release_closed(&self, seq: u64, id: u64) -> Vec<Arc<BoundListener>> {
        self.release_where(|l| l.id == id && l.unheld_after_close(seq))
    }

    /// `slot` went away (scale-down): releases the listeners that waited for its next worker.
    pub(crate) fn release_awaiting(&self, slot: usize) -> Vec<Arc<BoundListener>> {
        self.release_where(|l| l.awaits(slot))
    }

    fn release_where(&self, release: impl Fn(&BoundListener) -> bool) -> Vec<Arc<BoundListener>> {
        let mut table = self.by_key.lock().unwrap();
        let keys: Vec<ListenKey> = table
            .iter()
            .filter(|(_, l)| release(l))
            .map(|(k, _)| k.clone())
            .collect();
        let mut released = Vec::new();
        for key in keys {
            let listener = table.remove(&key).expect("listed above");
            listener.closed.send_replace(true);
            if key.kind == SocketKind::Unix {
                let _ = std::fs::remove_file(&listener.local);
            }
            released.push(listener);
        }
        released
    }

    /// Drops every socket we own and removes Unix socket files we created.
    ///
    /// With `keep_files`, Unix socket files stay: a new primary serves them (an upgrade).
    pub(crate) fn close_all(&self, keep_files: bool) {
        let mut table = self.by_key.lock().unwrap();
        for (key, listener) in table.drain() {
            listener.closed.send_replace(true);
            if key.kind == SocketKind::Unix && !keep_files {
                let _ = std::fs::remove_file(&listener.local);
            }
        }
    }
}

/// Resolves `HOST:PORT` (names allowed) to the first address.
pub(crate) fn resolve(address: &str) -> io::Result<SocketAddr> {
    address
        .to_socket_addrs()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad address: {e}")))?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "address resolves to nothing"))
}

/// Binds a socket of `kind` at `address` (CLOEXEC, blocking), listening for stream kinds, set
/// up by `options`. `reuseport`: SO_REUSEPORT, and a TCP socket is prepared (the migrator's
/// or the steering program attached) once it listens (before, it could not join the group: a
/// socket with a program of its own at `listen` conflicts with the group's sockets,
/// EADDRINUSE).
pub(crate) fn bind(
    kind: SocketKind,
    address: &str,
    reuseport: Option<Prepare<'_>>,
    options: BindOptions,
) -> io::Result<OwnedFd> {
    let socket = match kind {
        SocketKind::Tcp => {
            let addr = resolve(address)?;
            let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            socket.set_reuse_address(true)?;
            if reuseport.is_some() {
                socket.set_reuse_port(true)?;
            }
            // Inherited by every accepted connection (Linux).
            socket.set_tcp_nodelay(options.nodelay)?;
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG)?;
            if let Some(prepare) = reuseport {
                use std::os::fd::AsFd;
                prepare.apply(socket.as_fd())?;
            }
            socket
        }
        SocketKind::Udp => {
            let addr = resolve(address)?;
            let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            socket.set_reuse_address(true)?;
            if reuseport.is_some() {
                socket.set_reuse_port(true)?;
            }
            socket.bind(&addr.into())?;
            socket
        }
        SocketKind::Unix => {
            let path = Path::new(address);
            remove_stale_unix_socket(path)?;
            let socket = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            at_short_path(path, |short| socket.bind(&SockAddr::unix(short)?))?;
            if let Some(mode) = options.unix_mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
            }
            if let Some((uid, gid)) = options.unix_owner {
                std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
            }
            socket.listen(BACKLOG)?;
            socket
        }
    };
    Ok(socket.into())
}

/// Removes a Unix socket file left by a dead server; refuses to touch a live one or a file that
/// is not a socket.
fn remove_stale_unix_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "path exists and is not a socket",
        ));
    }
    match at_short_path(path, |p| std::os::unix::net::UnixStream::connect(p)) {
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another server is listening on this socket",
        )),
        Err(_) => std::fs::remove_file(path),
    }
}

/// Calls `use_path` with a name of `path` that fits a `sockaddr_un`: `path` itself when it is
/// shorter than `sun_path`, else `/proc/self/fd/DIRFD/NAME` with its directory opened
/// (`O_PATH`) for the call (the kernel resolves the rest of the path from the descriptor, so
/// only the short name has to fit). Errors are those of `use_path`, or of opening the
/// directory.
pub(crate) fn at_short_path<T>(
    path: &Path,
    use_path: impl FnOnce(&Path) -> io::Result<T>,
) -> io::Result<T> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::OpenOptionsExt;
    let (Some(name), true) = (
        path.file_name(),
        path.as_os_str().as_bytes().len() >= SUN_PATH,
    ) else {
        return use_path(path);
    };
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(dir)?;
    let mut short = PathBuf::from(format!("{PROC_FD_PREFIX}{}", dir.as_raw_fd()));
    short.push(name);
    use_path(&short)
}

/// The address a socket is bound to, as `HOST:PORT` or a path.
pub(crate) fn local_address(socket: &OwnedFd, kind: SocketKind) -> io::Result<String> {
    let sock = socket2::SockRef::from(socket);
    let addr = sock.local_addr()?;
    Ok(match kind {
        SocketKind::Unix => addr
            .as_pathname()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        _ => addr.as_socket().map(|a| a.to_string()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reuseport_listener() -> Arc<BoundListener> {
        let table = ListenerTable::new(BindOptions {
            migration: Migration::Off,
            ..BindOptions::default()
        });
        let key = ListenKey {
            kind: SocketKind::Tcp,
            address: "127.0.0.1:0".into(),
            mode: Mode::Reuseport,
            index: 0,
        };
        table.get_or_bind(key).unwrap().0
    }

    #[test]
    fn a_released_slot_closes_its_socket_but_the_groups_last_waits_for_the_next_worker() {
        let listener = reuseport_listener();
        let first = listener.socket_for(0).unwrap();
        let second = listener.socket_for(1).unwrap();
        assert!(!Arc::ptr_eq(&first, &second), "one socket per slot");
        assert!(Arc::ptr_eq(&listener.socket_for(0).unwrap(), &first));
        // Slot 0 goes: the primary drops its copy (the test's is the only one left).
        listener.release_slot(0);
        assert_eq!(Arc::strong_count(&first), 1);
        // Slot 1 goes too: its socket is the group's last, kept for the next worker.
        listener.release_slot(1);
        assert_eq!(Arc::strong_count(&second), 2);
        assert!(Arc::ptr_eq(&listener.socket_for(5).unwrap(), &second));
        // Releasing a slot without a socket changes nothing.
        listener.release_slot(0);
        assert!(Arc::ptr_eq(&listener.socket_for(5).unwrap(), &second));
    }

    /// A directory of the test's own under the temp dir, `depth` levels of 40-byte names deep
    /// (so that a socket in it has a path as long as wanted), removed by the caller.
    fn deep_dir(tag: &str, depth: usize) -> (PathBuf, PathBuf) {
        let top = std::env::temp_dir().join(format!("forkline-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let mut dir = top.clone();
        for _ in 0..depth {
            dir.push("d".repeat(40));
        }
        std::fs::create_dir_all(&dir).unwrap();
        (top, dir)
    }

    #[test]
    fn a_unix_listener_is_one_shared_socket_in_reuseport_and_steer_modes() {
        let (top, dir) = deep_dir("unix-shared", 0);
        let table = ListenerTable::new(BindOptions::default());
        for (n, mode) in [Mode::Reuseport, Mode::Steer].into_iter().enumerate() {
            let path = dir.join(format!("{n}.sock"));
            let key = ListenKey {
                kind: SocketKind::Unix,
                address: path.display().to_string(),
                mode,
                index: 0,
            };
            let (listener, fresh) = table.get_or_bind(key.clone()).unwrap();
            assert!(fresh);
            assert_eq!(listener.mode, Mode::Shared);
            // Every slot gets the one socket (a second bind on the path would fail).
            let first = listener.socket_for(0).unwrap();
            assert!(Arc::ptr_eq(&listener.socket_for(1).unwrap(), &first));
            // The same key finds it again.
            let (again, fresh) = table.get_or_bind(key).unwrap();
            assert!(!fresh);
            assert!(Arc::ptr_eq(&again, &listener));
        }
        table.close_all(false);
        let _ = std::fs::remove_dir_all(top);
    }

    #[test]
    fn a_unix_path_longer_than_sun_path_is_bound_through_its_directory() {
        let (top, dir) = deep_dir("unix-long", 3);
        let path = dir.join("server.sock");
        let address = path.display().to_string();
        assert!(address.len() >= SUN_PATH, "{address}");
        assert!(SockAddr::unix(&path).is_err(), "too long to bind directly");
        let table = ListenerTable::new(BindOptions {
            unix_mode: Some(0o600),
            ..BindOptions::default()
        });
        let key = ListenKey {
            kind: SocketKind::Unix,
            address: address.clone(),
            mode: Mode::Shared,
            index: 0,
        };
        let (listener, _) = table.get_or_bind(key.clone()).unwrap();
        // Named by the path asked for, not the descriptor's alias it was bound through.
        assert_eq!(listener.local, address);
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // It accepts, through the same kind of name.
        let client = at_short_path(&path, |p| std::os::unix::net::UnixStream::connect(p)).unwrap();
        let served = std::os::unix::net::UnixListener::from(
            listener.socket_for(0).unwrap().try_clone().unwrap(),
        );
        let (mut accepted, _) = served.accept().unwrap();
        use std::io::{Read, Write};
        (&client).write_all(b"hi").unwrap();
        let mut got = [0; 2];
        accepted.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        // A live socket there is seen as live: not removed, not bound over.
        let err = bind(SocketKind::Unix, &address, None, BindOptions::default()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{err}");
        // Released, its file is removed; a stale one left behind is bound over.
        table.close_all(false);
        drop((served, accepted, client));
        assert!(!path.exists());
        let stale = at_short_path(&path, |p| std::os::unix::net::UnixListener::bind(p)).unwrap();
        drop(stale);
        assert!(path.exists());
        let again = bind(SocketKind::Unix, &address, None, BindOptions::default()).unwrap();
        drop(again);
        let _ = std::fs::remove_dir_all(top);
    }
}
