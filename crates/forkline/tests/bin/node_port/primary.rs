//! The primary side of every scenario: the primary's `main`, the cluster a scenario starts
//! ([`Primary`]) and its event waits with deadlines, the check of every worker's event order at
//! the end, and the clean-up of whatever a failed scenario left behind.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use forkline::{
    Cluster, ClusterBuilder, Event, EventStream, Mode, RestartPolicy, WorkerHandle, WorkerStdio,
};
use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{timeout, timeout_at, Instant};

use crate::{run_primary, ENV_SCENARIO, SCENARIOS};

/// Everything a scenario does before its final clean-up.
const BODY_LIMIT: Duration = Duration::from_secs(12);
/// Graceful timeout of the final shutdown (workers left then get SIGKILL).
const CLEANUP_GRACE: Duration = Duration::from_secs(3);
/// How long the final shutdown may take in all.
const CLEANUP_LIMIT: Duration = Duration::from_secs(6);

/// The scenario this process runs.
static SCENARIO: OnceLock<String> = OnceLock::new();
/// The cluster of the running scenario, so a failed scenario can still be cleaned up.
static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub fn primary_main() -> ! {
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
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub exited_after_disconnect: bool,
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
pub fn subject(event: &Event) -> Option<&WorkerHandle> {
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
pub fn is(event: &Event, name: &str, worker: &WorkerHandle) -> bool {
    event.name() == name && subject(event) == Some(worker)
}

pub fn who(worker: &WorkerHandle) -> String {
    format!(
        "worker {} (uid {}, pid {})",
        worker.id(),
        worker.unique_id(),
        worker.pid()
    )
}

/// `who` without the pid, for what a wait is for (the pid may not be known yet).
pub fn which(worker: &WorkerHandle) -> String {
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
            reason,
        } => format!(
            "exit {} code {code:?} signal {signal:?} exited_after_disconnect {exited_after_disconnect} reason {reason}",
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

pub fn say(what: impl fmt::Display) {
    println!("[primary] {what}");
}

/// True while a process with `pid` exists and is not a zombie (Node's `common.isAlive`).
pub fn alive(pid: u32) -> bool {
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
pub fn raw_kill(worker: &WorkerHandle, signal: Signal) -> Result<(), String> {
    let pid = worker.pid();
    check!(pid != 0, "{} has no process to signal", who(worker));
    say(format_args!("kill({pid}, {signal}) (worker.process.kill)"));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
        .map_err(|e| format!("kill({pid}, {signal}): {e}"))
}

/// A listener on 127.0.0.1 that holds a port so workers cannot bind it.
pub fn hog_port() -> Result<(std::net::TcpListener, u16), String> {
    let hog = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = hog.local_addr().map_err(|e| e.to_string())?.port();
    Ok((hog, port))
}

/// The primary of one scenario: its cluster, its event stream and every event seen so far.
pub struct Primary {
    pub cluster: Cluster,
    events: EventStream,
    /// Every event, in the order the cluster reported them.
    pub log: Vec<Event>,
    /// When every wait of the scenario gives up.
    pub deadline: Instant,
}

impl Primary {
    /// Starts a cluster with Node's defaults (no restarts, round-robin) and the bystander in
    /// slot 0; `configure` adds the scenario's settings (Node's `setupPrimary`).
    pub async fn start(
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
    pub fn fork(&self) -> Result<WorkerHandle, String> {
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
    pub async fn next(&mut self, what: &str) -> Result<Event, String> {
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
    pub async fn wait_for(
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
    pub async fn wait_event(&mut self, name: &str, worker: &WorkerHandle) -> Result<Event, String> {
        let what = format!("{name} of {}", which(worker));
        self.wait_for(&what, |e| is(e, name, worker)).await
    }

    /// Waits for `worker`'s `listening` event and returns its address.
    pub async fn wait_listening(&mut self, worker: &WorkerHandle) -> Result<SocketAddr, String> {
        match self.wait_event("listening", worker).await? {
            Event::Listening { address, .. } => address
                .parse()
                .map_err(|e| format!("listening address {address:?} is not HOST:PORT: {e}")),
            _ => unreachable!("wait_event matched a listening event"),
        }
    }

    /// Waits for `worker`'s `exit` event.
    pub async fn wait_exit(&mut self, worker: &WorkerHandle) -> Result<Exit, String> {
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
    pub async fn wait_message_eq(
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
    pub async fn wait_message_before_exit(
        &mut self,
        worker: &WorkerHandle,
    ) -> Result<Value, String> {
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
    pub async fn wait_message(&mut self, worker: &WorkerHandle) -> Result<Value, String> {
        match self.wait_event("message", worker).await? {
            Event::Message { payload, .. } => Ok(payload),
            _ => unreachable!("wait_event matched a message event"),
        }
    }

    /// Node's `cluster.workers`: every worker whose process has not exited, without the
    /// bystander.
    pub fn node_workers(&self) -> Vec<WorkerHandle> {
        self.cluster
            .workers()
            .into_iter()
            .filter(|w| w.id() != 0)
            .collect()
    }

    /// Node's `cluster.disconnect(callback)`: disconnects every connected worker and returns
    /// once each of them has disconnected and exited.
    pub async fn disconnect_all(&mut self) -> Result<(), String> {
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
    pub fn index_of(&self, name: &str, worker: &WorkerHandle) -> Option<usize> {
        self.log.iter().position(|e| is(e, name, worker))
    }

    /// How many `name` events `worker` had.
    pub fn count(&self, name: &str, worker: &WorkerHandle) -> usize {
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
            Event::Restarting { slot, .. } | Event::GaveUp { slot, .. } => problems.push(format!(
                "slot {slot} was restarted ({}) under RestartPolicy::Never",
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
pub async fn fetch(addr: SocketAddr, deadline: Instant) -> Result<String, String> {
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
