//! Test fixture for `tests/node_cluster.rs`: Node.js's own cluster tests
//! (`test/parallel/test-cluster-*.js` in nodejs/node, read from denoland/node_test), ported to
//! forkline's API, one scenario per Node file.
//!
//! `forkline-node-port SCENARIO` runs one scenario as the primary: it starts its own cluster,
//! plays the Node test's primary part, checks what the Node test checks, prints `ok` and exits 0,
//! or prints `FAIL SCENARIO: why` and exits 1. Its workers are this same program (`role()`); they
//! learn the scenario from `NODE_PORT_SCENARIO` and play the Node test's worker part. Worker-side
//! assertions end in the worker's exit code (1 when one failed), which the primary checks.
//! `forkline-node-port --list` prints every scenario with its Node file.
//!
//! How Node maps onto forkline here:
//! - Node's primary starts with no worker; a forkline cluster needs at least one. Slot 0 is
//!   therefore a *bystander* that only waits to be disconnected, and the Node test's workers are
//!   the ones the scenario `fork()`s: Node's worker ids 1, 2, ... are slots 1, 2, ... Node's
//!   `cluster.workers` and `cluster.disconnect()` leave the bystander out.
//! - `cluster.fork(env)` has no per-fork environment in forkline: a worker picks its part by its
//!   slot id, and environment variables are set for every worker with `ClusterBuilder::env`.
//! - Node's worker runtime closes its servers and then its IPC channel when the primary asks it
//!   to disconnect, and the process exits once nothing keeps it alive. A forkline worker is the
//!   program itself, so the worker parts below do just that: `accept` ends, in-flight connections
//!   finish, `Worker::disconnect()` closes the channel, `main` returns.
//! - Node's `worker.process.kill(sig)` (a raw signal that bypasses the `Worker` API) is
//!   `kill(2)` on `WorkerHandle::pid()`; Node's worker-side `cluster.worker.kill()` /
//!   `destroy()` is `Worker::disconnect()` followed by `exit(0)`.
//! - `RestartPolicy::Never`, Node's behaviour, everywhere.
//!
//! Every scenario also checks, for every worker, that its events come in Node's order: one
//! `fork` first, at most one `online` before any `listening`, `message` or `disconnect`, exactly
//! one `disconnect`, then exactly one `exit`, and nothing after it; and that no worker broke the
//! protocol and no slot was restarted. Every wait has a deadline: a scenario ends by itself
//! within about 20 s, and the primary stops its workers before it exits.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use forkline::worker::{AsyncTcpListener, Connection, Messages};
use forkline::{
    role, Cluster, ClusterBuilder, Event, EventStream, Mode, RestartPolicy, Role, Worker,
    WorkerHandle, WorkerStdio,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{timeout, timeout_at, Instant};

/// Names the scenario for the workers.
const ENV_SCENARIO: &str = "NODE_PORT_SCENARIO";
/// Everything a scenario does before its final clean-up.
const BODY_LIMIT: Duration = Duration::from_secs(12);
/// Graceful timeout of the final shutdown (workers left then get SIGKILL).
const CLEANUP_GRACE: Duration = Duration::from_secs(3);
/// How long the final shutdown may take in all.
const CLEANUP_LIMIT: Duration = Duration::from_secs(6);
/// A worker that is still running after this long exits by itself.
const WORKER_LIFETIME: Duration = Duration::from_secs(30);

/// The scenario this process runs.
static SCENARIO: OnceLock<String> = OnceLock::new();
/// The cluster of the running scenario, so a failed scenario can still be cleaned up.
static CLUSTER: OnceLock<Cluster> = OnceLock::new();

type Conn = Connection<TcpStream>;

/// Returns `Err(message)` from the enclosing function unless `cond` holds (Node's `assert`).
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err(format!($($msg)+));
        }
    };
}

/// Lists every scenario once: `name: "Node file"`. Each name is a module below with
/// `async fn primary() -> Result<Primary, String>` and `async fn worker(Worker, usize) -> i32`.
macro_rules! scenarios {
    ($($name:ident: $node:literal;)*) => {
        /// Every scenario and the Node test it ports.
        const SCENARIOS: &[(&str, &str)] = &[$((stringify!($name), $node)),*];

        async fn run_primary(name: &str) -> Result<Primary, String> {
            match name {
                $(stringify!($name) => $name::primary().await,)*
                other => Err(format!("unknown scenario {other:?} (try --list)")),
            }
        }

        async fn run_worker(name: &str, worker: Worker, id: usize) -> i32 {
            match name {
                $(stringify!($name) => $name::worker(worker, id).await,)*
                other => {
                    eprintln!("[worker {id}] unknown scenario {other:?}");
                    91
                }
            }
        }
    };
}

scenarios! {
    worker_events: "test/parallel/test-cluster-worker-events.js";
    worker_isconnected: "test/parallel/test-cluster-worker-isconnected.js";
    worker_isdead: "test/parallel/test-cluster-worker-isdead.js";
    worker_exit: "test/parallel/test-cluster-worker-exit.js";
    worker_death: "test/parallel/test-cluster-worker-death.js";
    worker_kill: "test/parallel/test-cluster-worker-kill.js";
    worker_kill_signal: "test/parallel/test-cluster-worker-kill-signal.js";
    worker_disconnect: "test/parallel/test-cluster-worker-disconnect.js";
    worker_destroy: "test/parallel/test-cluster-worker-destroy.js";
    worker_forced_exit: "test/parallel/test-cluster-worker-forced-exit.js";
    worker_init: "test/parallel/test-cluster-worker-init.js";
    worker_no_exit: "test/parallel/test-cluster-worker-no-exit.js";
    worker_wait_server_close: "test/parallel/test-cluster-worker-wait-server-close.js";
    worker_disconnect_on_error: "test/parallel/test-cluster-worker-disconnect-on-error.js";
    basic: "test/parallel/test-cluster-basic.js";
    listening_port: "test/parallel/test-cluster-listening-port.js";
    message: "test/parallel/test-cluster-message.js";
    invalid_message: "test/parallel/test-cluster-invalid-message.js";
    fork_env: "test/parallel/test-cluster-fork-env.js";
    setup_primary: "test/parallel/test-cluster-setup-primary.js";
    cwd: "test/parallel/test-cluster-cwd.js";
    disconnect: "test/parallel/test-cluster-disconnect.js";
    disconnect_before_exit: "test/parallel/test-cluster-disconnect-before-exit.js";
    disconnect_idle_worker: "test/parallel/test-cluster-disconnect-idle-worker.js";
    disconnect_leak: "test/parallel/test-cluster-disconnect-leak.js";
    disconnect_unshared_tcp: "test/parallel/test-cluster-disconnect-unshared-tcp.js";
    disconnect_unshared_udp: "test/parallel/test-cluster-disconnect-unshared-udp.js";
    disconnect_race: "test/parallel/test-cluster-disconnect-race.js";
    disconnect_exited_after_disconnect_race:
        "test/parallel/test-cluster-disconnect-exitedAfterDisconnect-race.js";
    concurrent_disconnect: "test/parallel/test-cluster-concurrent-disconnect.js";
    shared_leak: "test/parallel/test-cluster-shared-leak.js";
    kill_disconnect: "test/parallel/test-cluster-kill-disconnect.js";
    kill_infinite_loop: "test/parallel/test-cluster-kill-infinite-loop.js";
    call_and_destroy: "test/parallel/test-cluster-call-and-destroy.js";
    process_disconnect: "test/parallel/test-cluster-process-disconnect.js";
    server_restart_rr: "test/parallel/test-cluster-server-restart-rr.js";
    server_restart_none: "test/parallel/test-cluster-server-restart-none.js";
    port_reuse_between_workers: "test/sequential/test-cluster-port-reuse-between-workers.js";
    eaddrinuse: "test/parallel/test-cluster-eaddrinuse.js";
    shared_handle_bind_error: "test/parallel/test-cluster-shared-handle-bind-error.js";
}

fn main() {
    match role() {
        Role::Primary => primary_main(),
        Role::Worker(id) => worker_main(id),
    }
}

// ------------------------------------------------------------------------------------------
// The primary side
// ------------------------------------------------------------------------------------------

fn primary_main() -> ! {
    let name = std::env::args()
        .nth(1)
        .or_else(|| std::env::var(ENV_SCENARIO).ok())
        .unwrap_or_default();
    if name == "--list" {
        for (name, node) in SCENARIOS {
            println!("{name} {node}");
        }
        std::process::exit(0);
    }
    let _ = SCENARIO.set(name.clone());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(&name)) {
        Ok(()) => {
            println!("ok");
            std::process::exit(0);
        }
        Err(error) => {
            println!("FAIL {name}: {error}");
            std::process::exit(1);
        }
    }
}

/// Runs the scenario, then stops the cluster: gracefully and with the final checks when the
/// scenario passed, at once when it failed.
async fn run(name: &str) -> Result<(), String> {
    match timeout(BODY_LIMIT + Duration::from_secs(2), run_primary(name)).await {
        Ok(Ok(primary)) => primary.finish().await,
        Ok(Err(error)) => {
            abort().await;
            Err(error)
        }
        Err(_) => {
            abort().await;
            Err(format!("the scenario did not end within {BODY_LIMIT:?}"))
        }
    }
}

/// Stops whatever is left of a failed scenario's cluster: `shutdown_now()`, plus SIGKILL by
/// pid for every worker, including one still being started (whose `fork` event comes later),
/// so a failed scenario ends quickly whatever state the cluster is in.
async fn abort() {
    let Some(cluster) = CLUSTER.get() else { return };
    println!("[primary] stopping every worker now (shutdown_now, then SIGKILL by pid)");
    let mut events = cluster.events();
    cluster.shutdown_now();
    let sigkill = |worker: &WorkerHandle| {
        if worker.pid() != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(worker.pid() as i32),
                Signal::SIGKILL,
            );
        }
    };
    cluster.workers().iter().for_each(sigkill);
    let stopped = timeout(CLEANUP_LIMIT, async {
        while let Some(event) = events.next().await {
            if let Event::Fork { worker } = event {
                sigkill(&worker);
            }
        }
        cluster.wait().await
    })
    .await;
    if stopped.is_err() {
        println!("[primary] the cluster did not stop within {CLEANUP_LIMIT:?}");
    }
}

/// How a worker exited, from its `exit` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Exit {
    code: Option<i32>,
    signal: Option<i32>,
    exited_after_disconnect: bool,
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "code {:?}, signal {:?}, exited_after_disconnect {}",
            self.code, self.signal, self.exited_after_disconnect
        )
    }
}

/// The worker an event is about, if any.
fn subject(event: &Event) -> Option<&WorkerHandle> {
    match event {
        Event::Fork { worker }
        | Event::Online { worker }
        | Event::Listening { worker, .. }
        | Event::Ready { worker }
        | Event::Disconnect { worker }
        | Event::Exit { worker, .. }
        | Event::Message { worker, .. }
        | Event::WorkerError { worker, .. } => Some(worker),
        _ => None,
    }
}

/// True when `event` is the `name` event of `worker`.
fn is(event: &Event, name: &str, worker: &WorkerHandle) -> bool {
    event.name() == name && subject(event) == Some(worker)
}

fn who(worker: &WorkerHandle) -> String {
    format!(
        "worker {} (uid {}, pid {})",
        worker.id(),
        worker.unique_id(),
        worker.pid()
    )
}

/// `who` without the pid, for what a wait is for (the pid may not be known yet).
fn which(worker: &WorkerHandle) -> String {
    format!("worker {} (uid {})", worker.id(), worker.unique_id())
}

fn describe(event: &Event) -> String {
    match event {
        Event::Listening { worker, address } => format!("listening {} {address}", who(worker)),
        Event::Exit {
            worker,
            code,
            signal,
            exited_after_disconnect,
        } => format!(
            "exit {} code {code:?} signal {signal:?} exited_after_disconnect {exited_after_disconnect}",
            who(worker)
        ),
        Event::Message { worker, payload } => format!("message {} {payload}", who(worker)),
        Event::WorkerError { worker, error } => format!("worker-error {} {error}", who(worker)),
        other => match subject(other) {
            Some(worker) => format!("{} {}", other.name(), who(worker)),
            None => format!("{other:?}"),
        },
    }
}

fn say(what: impl fmt::Display) {
    println!("[primary] {what}");
}

/// True while a process with `pid` exists and is not a zombie (Node's `common.isAlive`).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Sends `signal` to `worker`'s process directly (Node's `worker.process.kill(signal)`).
fn raw_kill(worker: &WorkerHandle, signal: Signal) -> Result<(), String> {
    let pid = worker.pid();
    check!(pid != 0, "{} has no process to signal", who(worker));
    say(format_args!("kill({pid}, {signal}) (worker.process.kill)"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .map_err(|e| format!("kill({pid}, {signal}): {e}"))
}

/// A listener on 127.0.0.1 that holds a port so workers cannot bind it.
fn hog_port() -> Result<(std::net::TcpListener, u16), String> {
    let hog = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = hog.local_addr().map_err(|e| e.to_string())?.port();
    Ok((hog, port))
}

/// The primary of one scenario: its cluster, its event stream and every event seen so far.
struct Primary {
    cluster: Cluster,
    events: EventStream,
    /// Every event, in the order the cluster reported them.
    log: Vec<Event>,
    /// When every wait of the scenario gives up.
    deadline: Instant,
}

impl Primary {
    /// Starts a cluster with Node's defaults (no restarts, round-robin) and the bystander in
    /// slot 0; `configure` adds the scenario's settings (Node's `setupPrimary`).
    async fn start(
        configure: impl FnOnce(ClusterBuilder) -> ClusterBuilder,
    ) -> Result<Primary, String> {
        let scenario = SCENARIO.get().cloned().unwrap_or_default();
        let builder = Cluster::builder()
            .workers(1)
            .restart(RestartPolicy::Never)
            .mode(Mode::RoundRobin)
            .stdio(WorkerStdio::Inherit)
            .graceful_timeout(CLEANUP_GRACE)
            .handle_signals(false)
            .env(ENV_SCENARIO, scenario);
        let cluster = configure(builder)
            .start()
            .await
            .map_err(|e| format!("starting the cluster: {e}"))?;
        let _ = CLUSTER.set(cluster.clone());
        let events = cluster.events();
        Ok(Primary {
            cluster,
            events,
            log: Vec::new(),
            deadline: Instant::now() + BODY_LIMIT,
        })
    }

    /// Node's `cluster.fork()`.
    fn fork(&self) -> Result<WorkerHandle, String> {
        let worker = self
            .cluster
            .fork()
            .map_err(|e| format!("fork() failed: {e}"))?;
        say(format_args!(
            "fork() -> worker {} (uid {})",
            worker.id(),
            worker.unique_id()
        ));
        Ok(worker)
    }

    /// The next event (deadline: the scenario's).
    async fn next(&mut self, what: &str) -> Result<Event, String> {
        match timeout_at(self.deadline, self.events.next()).await {
            Ok(Some(event)) => {
                say(format_args!("event {}", describe(&event)));
                self.log.push(event.clone());
                Ok(event)
            }
            Ok(None) => Err(format!("the event stream ended while waiting for {what}")),
            Err(_) => Err(format!("timed out waiting for {what}")),
        }
    }

    /// The first event ever reported that matches `pred`, waiting for it if it has not come
    /// yet (like a Node handler registered right after `fork()`).
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Result<Event, String> {
        if let Some(event) = self.log.iter().find(|e| pred(e)) {
            return Ok(event.clone());
        }
        loop {
            let event = self.next(what).await?;
            if pred(&event) {
                return Ok(event);
            }
        }
    }

    /// Waits for `worker`'s `name` event.
    async fn wait_event(&mut self, name: &str, worker: &WorkerHandle) -> Result<Event, String> {
        let what = format!("{name} of {}", which(worker));
        self.wait_for(&what, |e| is(e, name, worker)).await
    }

    /// Waits for `worker`'s `listening` event and returns its address.
    async fn wait_listening(&mut self, worker: &WorkerHandle) -> Result<SocketAddr, String> {
        match self.wait_event("listening", worker).await? {
            Event::Listening { address, .. } => address
                .parse()
                .map_err(|e| format!("listening address {address:?} is not HOST:PORT: {e}")),
            _ => unreachable!("wait_event matched a listening event"),
        }
    }

    /// Waits for `worker`'s `exit` event.
    async fn wait_exit(&mut self, worker: &WorkerHandle) -> Result<Exit, String> {
        match self.wait_event("exit", worker).await? {
            Event::Exit {
                code,
                signal,
                exited_after_disconnect,
                ..
            } => Ok(Exit {
                code,
                signal,
                exited_after_disconnect,
            }),
            _ => unreachable!("wait_event matched an exit event"),
        }
    }

    /// Waits for the first message from `worker` that equals `expected`.
    async fn wait_message_eq(
        &mut self,
        worker: &WorkerHandle,
        expected: Value,
    ) -> Result<(), String> {
        let what = format!("message {expected} from {}", which(worker));
        self.wait_for(&what, |e| {
            matches!(e, Event::Message { worker: w, payload } if w == worker && *payload == expected)
        })
        .await
        .map(|_| ())
    }

    /// Waits for the first message from `worker`, which must come before its `exit` event: a
    /// worker's messages are all read before its exit is handled.
    async fn wait_message_before_exit(&mut self, worker: &WorkerHandle) -> Result<Value, String> {
        let what = format!("message (or exit) of {}", which(worker));
        let event = self
            .wait_for(&what, |e| is(e, "message", worker) || is(e, "exit", worker))
            .await?;
        match event {
            Event::Message { payload, .. } => Ok(payload),
            _ => Err(format!(
                "{}'s exit event came before the message it sent before exiting",
                who(worker)
            )),
        }
    }

    /// Waits for the first message from `worker` and returns it.
    async fn wait_message(&mut self, worker: &WorkerHandle) -> Result<Value, String> {
        match self.wait_event("message", worker).await? {
            Event::Message { payload, .. } => Ok(payload),
            _ => unreachable!("wait_event matched a message event"),
        }
    }

    /// Node's `cluster.workers`: every worker whose process has not exited, without the
    /// bystander.
    fn node_workers(&self) -> Vec<WorkerHandle> {
        self.cluster
            .workers()
            .into_iter()
            .filter(|w| w.id() != 0)
            .collect()
    }

    /// Node's `cluster.disconnect(callback)`: disconnects every connected worker and returns
    /// once each of them has disconnected and exited.
    async fn disconnect_all(&mut self) -> Result<(), String> {
        let workers = self.node_workers();
        say(format_args!(
            "cluster.disconnect(): {} worker(s)",
            workers.len()
        ));
        for worker in &workers {
            if worker.is_connected() {
                worker.disconnect();
            } else {
                say(format_args!(
                    "cluster.disconnect(): {} is not connected; left alone, as Node does",
                    who(worker)
                ));
            }
        }
        for worker in &workers {
            self.wait_event("disconnect", worker).await?;
            self.wait_exit(worker).await?;
        }
        Ok(())
    }

    /// Position of `worker`'s first `name` event in the log.
    fn index_of(&self, name: &str, worker: &WorkerHandle) -> Option<usize> {
        self.log.iter().position(|e| is(e, name, worker))
    }

    /// How many `name` events `worker` had.
    fn count(&self, name: &str, worker: &WorkerHandle) -> usize {
        self.log.iter().filter(|e| is(e, name, worker)).count()
    }

    /// Stops the cluster gracefully, reads every remaining event, and checks the event order
    /// of every worker.
    async fn finish(mut self) -> Result<(), String> {
        say("scenario done; shutting the cluster down");
        self.cluster.shutdown();
        self.deadline = Instant::now() + CLEANUP_LIMIT;
        loop {
            match timeout_at(self.deadline, self.events.next()).await {
                Ok(Some(event)) => {
                    say(format_args!("event {}", describe(&event)));
                    self.log.push(event);
                }
                Ok(None) => break,
                Err(_) => {
                    abort().await;
                    return Err(format!(
                        "the cluster did not shut down within {CLEANUP_LIMIT:?}"
                    ));
                }
            }
        }
        let shutdown = self.cluster.wait().await;
        check_order(&self.log)?;
        check!(
            shutdown.clean,
            "the final shutdown was not clean: slots {:?} had to be killed",
            shutdown.killed
        );
        Ok(())
    }
}

/// Checks every worker's events against Node's order, and that nothing was restarted.
fn check_order(log: &[Event]) -> Result<(), String> {
    let mut problems = Vec::new();
    let mut per_worker: BTreeMap<u64, (WorkerHandle, Vec<&'static str>)> = BTreeMap::new();
    for event in log {
        match event {
            Event::Restarting { id, .. } | Event::GaveUp { id, .. } => problems.push(format!(
                "slot {id} was restarted ({}) under RestartPolicy::Never",
                event.name()
            )),
            Event::WorkerError { worker, error } => {
                problems.push(format!("{} broke the protocol: {error}", who(worker)))
            }
            _ => {}
        }
        if let Some(worker) = subject(event) {
            per_worker
                .entry(worker.unique_id())
                .or_insert_with(|| (worker.clone(), Vec::new()))
                .1
                .push(event.name());
        }
    }
    for (worker, names) in per_worker.values() {
        let count = |name: &str| names.iter().filter(|n| **n == name).count();
        let first = |name: &str| names.iter().position(|n| *n == name);
        let wrong = if names.first() != Some(&"fork") || count("fork") != 1 {
            Some("one fork event, first")
        } else if count("exit") != 1 || names.last() != Some(&"exit") {
            Some("one exit event, last")
        } else if count("disconnect") != 1 {
            Some("one disconnect event")
        } else if count("online") > 1 {
            Some("at most one online event")
        } else if let Some(online) = first("online") {
            let later = ["listening", "message", "disconnect"];
            let early = names[..online].iter().any(|n| later.contains(n));
            early.then_some("online before any listening, message or disconnect event")
        } else {
            None
        };
        if let Some(rule) = wrong {
            problems.push(format!(
                "{}: expected {rule}; got {}",
                who(worker),
                names.join(", ")
            ));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Connects to `addr` and reads until the server closes (deadline: the scenario's).
async fn fetch(addr: SocketAddr, deadline: Instant) -> Result<String, String> {
    let mut stream = timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| format!("timed out connecting to {addr}"))?
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let mut reply = Vec::new();
    timeout_at(deadline, stream.read_to_end(&mut reply))
        .await
        .map_err(|_| format!("timed out reading from {addr}"))?
        .map_err(|e| format!("reading from {addr}: {e}"))?;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

// ------------------------------------------------------------------------------------------
// The worker side
// ------------------------------------------------------------------------------------------

fn worker_main(id: usize) -> ! {
    // Whatever happens, no worker of this fixture outlives its welcome.
    std::thread::spawn(move || {
        std::thread::sleep(WORKER_LIFETIME);
        eprintln!("[worker {id}] still running after {WORKER_LIFETIME:?}; exiting");
        std::process::exit(92);
    });
    let name = std::env::var(ENV_SCENARIO).unwrap_or_default();
    let worker = match forkline::worker::connect() {
        Ok(worker) => worker,
        Err(e) => {
            eprintln!("[worker {id}] connect failed: {e}");
            std::process::exit(90);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        if id == 0 {
            idle(&worker).await
        } else {
            run_worker(&name, worker, id).await
        }
    });
    std::process::exit(code);
}

/// Reports a failed worker-side assertion; the worker then exits with 1.
fn fail(id: usize, what: impl fmt::Display) -> i32 {
    eprintln!("[worker {id} pid {}] FAIL: {what}", std::process::id());
    1
}

/// Awaits `future`, exiting the process if it takes longer than the worker's lifetime.
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    match timeout(WORKER_LIFETIME, future).await {
        Ok(value) => value,
        Err(_) => {
            eprintln!(
                "[worker pid {}] timed out waiting for {what}",
                std::process::id()
            );
            std::process::exit(93);
        }
    }
}

/// Waits until the primary asks this worker to disconnect.
async fn until_disconnected(worker: &Worker) {
    bounded("the primary's disconnect", worker.disconnected()).await;
}

/// The Node worker runtime with nothing to do: once asked to disconnect, close the channel and
/// exit 0.
async fn idle(worker: &Worker) -> i32 {
    until_disconnected(worker).await;
    worker.disconnect();
    0
}

/// The message stream (taken once per process).
fn messages(worker: &Worker) -> Messages {
    worker.messages().expect("messages are taken once")
}

/// The next message from the primary; `None` once the primary disconnected this worker.
async fn recv(messages: &mut Messages) -> Option<Value> {
    bounded("a message from the primary", messages.recv()).await
}

/// Listens through the primary.
async fn listen(worker: &Worker, address: &str) -> forkline::Result<AsyncTcpListener> {
    bounded("the answer to listen", worker.listen_async(address)).await
}

/// Serves `listener` until the worker is disconnected (`accept` ends), then waits for the
/// connections in flight (Node's `server.close()` callback).
async fn serve<F, Fut>(listener: AsyncTcpListener, handler: F) -> Result<(), String>
where
    F: Fn(Conn) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let mut in_flight = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok(Some((conn, _peer))) => {
                in_flight.spawn(handler(conn));
            }
            Ok(None) => break,
            Err(e) => return Err(format!("accept failed: {e}")),
        }
    }
    drop(listener);
    while let Some(done) = bounded("connections to finish", in_flight.join_next()).await {
        done.map_err(|e| format!("connection task failed: {e}"))??;
    }
    Ok(())
}

/// Writes `reply` and closes the connection (Node's `socket.end(reply)`); a client that went
/// away first is fine.
async fn reply_and_close(mut conn: Conn, reply: &'static [u8]) -> Result<(), String> {
    let _ = conn.write_all(reply).await;
    let _ = conn.shutdown().await;
    Ok(())
}

/// Reads until the peer closes its side, discarding the data.
async fn read_to_eof(stream: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<()> {
    let mut buf = [0u8; 1024];
    while bounded("the peer to close", stream.read(&mut buf)).await? > 0 {}
    Ok(())
}

fn env_port(name: &str) -> String {
    let port = std::env::var(name).unwrap_or_default();
    format!("127.0.0.1:{port}")
}

// ------------------------------------------------------------------------------------------
// The scenarios
// ------------------------------------------------------------------------------------------

/// A message sent right after `fork()` (before `online`) reaches the worker, which exits with
/// code 2 on it. Not ported: the same message on both `process` and `cluster.worker` and the
/// worker's `error` event (Node's objects; forkline has one message stream).
mod worker_events {
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
mod worker_isconnected {
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
mod worker_isdead {
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
mod worker_exit {
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
mod worker_death {
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
mod worker_kill {
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
mod worker_kill_signal {
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
mod worker_disconnect {
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
mod worker_destroy {
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
mod worker_forced_exit {
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
mod worker_init {
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
mod worker_no_exit {
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
/// closed) and exit 0.
mod worker_wait_server_close {
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
mod worker_disconnect_on_error {
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

/// The cluster's events for a worker that listens and is killed: `fork`, `online`,
/// `listening`, `exit` in that order, each about the worker `fork()` returned (id 1: the lowest
/// free slot), `listening` with 127.0.0.1 and a real port, `exit` with SIGTERM. Not ported:
/// `worker.state` at each event (events reach the primary's code asynchronously, so forkline's
/// state may be further along), `instanceof cluster.Worker`, NODE_UNIQUE_ID removal.
mod basic {
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
mod listening_port {
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
mod message {
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
mod invalid_message {
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
mod fork_env {
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
mod setup_primary {
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
mod cwd {
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

/// 8 workers, each with two servers; both answer; `cluster.disconnect()` stops them all; then
/// the same again, to confirm the clean-up. forkline keys listeners by address, so two
/// `listen(0)` in one worker would share one listener (Node gives each its own port): the two
/// servers listen on two free ports chosen by the primary instead.
mod disconnect {
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
mod disconnect_before_exit {
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
mod disconnect_idle_worker {
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
mod disconnect_leak {
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
mod disconnect_unshared_tcp {
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
mod disconnect_unshared_udp {
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
mod disconnect_race {
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
mod disconnect_exited_after_disconnect_race {
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
mod concurrent_disconnect {
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
mod shared_leak {
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
mod kill_disconnect {
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
mod kill_infinite_loop {
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
mod call_and_destroy {
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
mod process_disconnect {
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
mod server_restart_rr {
    use super::*;

    pub async fn primary() -> Result<Primary, String> {
        server_restart(Mode::RoundRobin).await
    }

    pub async fn worker(worker: Worker, id: usize) -> i32 {
        server_restart_worker(worker, id).await
    }
}

/// Shared-socket (`SCHED_NONE`) server restart, see [`server_restart`].
mod server_restart_none {
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
mod port_reuse_between_workers {
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
mod eaddrinuse {
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
mod shared_handle_bind_error {
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
