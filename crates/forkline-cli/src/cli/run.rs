//! `forkline run [OPTIONS] -- COMMAND [ARGS...]`: validate everything that can be validated
//! before a process starts (settings, command, user, sockets), start the cluster, then follow
//! its events until it stops — reporting readiness to systemd and stopping by itself when no
//! worker is left to run.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use clap::{ArgMatches, Args};
use forkline::{
    Cluster, ClusterBuilder, ClusterOptions, Event, ListenSpec, ReplaceFailure, Replacement,
    WorkerHandle, WorkerState,
};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::error::{self, CliError};
use crate::parse::{ListenAddr, SocketOwner};
use crate::settings::{Settings, Source};
use crate::systemd::Notifier;
use crate::{activation, hints, logging, systemd};

/// How long "no worker left and none to restart" must hold before the primary stops.
const NOTHING_LEFT_GRACE: Duration = Duration::from_millis(250);

const EXAMPLES: &str = "\
Examples:
  forkline run -w 4 -l 0.0.0.0:8080 -- node server.js            # server.listen({fd: 3})
  forkline run -l 127.0.0.1:8000 --mode proxy --ready listen -- \\
      sh -c 'exec python3 -m http.server \"$PORT\" --bind 127.0.0.1'
  forkline run -l 127.0.0.1:3000 --mode round-robin -- ./target/release/my-forkline-worker
  forkline run --config /etc/forkline.toml

Each worker gets its sockets as fds 3.. (LISTEN_FDS, LISTEN_FDNAMES, LISTEN_PID), PORT,
FORKLINE_WORKER_ID and a NOTIFY_SOCKET for sd_notify (READY=1, WATCHDOG=1).
Flags override environment variables, which override the config file.
Signals: TERM/INT graceful stop, QUIT immediate stop, HUP rolling restart, TTIN/TTOU +1/-1 worker.";

/// Arguments of `forkline run`.
#[derive(Debug, Args)]
#[command(
    override_usage = "forkline run [OPTIONS] [--] COMMAND [ARGS]...",
    after_long_help = EXAMPLES
)]
pub struct RunArgs {
    /// Settings (each also readable from an environment variable or the config file).
    #[command(flatten)]
    pub settings: Settings,

    /// The program each worker runs, and its arguments [default: the config file's `command`]
    #[arg(value_name = "COMMAND", trailing_var_arg = true)]
    pub command: Vec<OsString>,
}

/// Runs the cluster until it stops; returns the exit code.
pub fn run(args: RunArgs, matches: &ArgMatches) -> Result<i32, CliError> {
    let mut settings = args.settings.resolve(matches, args.command, None)?;
    let Some(command) = settings.command.first().cloned() else {
        return Err(CliError::Usage(
            "no command to run: forkline run [OPTIONS] -- COMMAND [ARGS...]".into(),
        ));
    };
    if let Some(cwd) = &settings.cwd {
        if !cwd.is_dir() {
            return Err(CliError::Usage(format!(
                "--cwd {}: not a directory",
                cwd.display()
            )));
        }
    }
    let program =
        forkline::cli_support::resolve_program(Path::new(&command), settings.cwd.as_deref())
            .map_err(error::from_library)?;
    let (uid, gid) = user_and_group(settings.user.as_deref(), settings.group.as_deref())?;
    let socket_owner = settings
        .socket_owner
        .as_ref()
        .map(|owner| socket_owner(owner, settings.source("socket-owner")))
        .transpose()?;

    // Both take variables out of the environment: they must run before any thread exists.
    let activation = activation::take()?;
    let notifier = systemd::take()
        .map_err(|e| CliError::Runtime(format!("NOTIFY_SOCKET: cannot use it: {e}")))?;

    let asked_for = settings.listen.clone();
    if !activation.listeners.is_empty() {
        settings.listen = activation.addresses();
        if settings.mode.socket_per_worker()
            && !activation
                .sockets
                .iter()
                .all(|s| activation::has_reuseport(s))
        {
            return Err(CliError::Usage(format!(
                "--mode {} with socket activation needs ReusePort=yes in the .socket unit",
                settings.mode.as_str()
            )));
        }
    }
    settings.check()?;

    logging::init(settings.log_format.into(), &settings.log_level).map_err(CliError::Usage)?;
    if let Some(why) = &activation.ignored {
        tracing::warn!("{why}");
    }
    if settings.max_requests.is_some() && settings.mode.workers_accept() {
        tracing::warn!(
            "--max-requests counts connections only in proxy and round-robin modes, where the \
             primary accepts; in {} mode workers accept on their own and are not recycled by count",
            settings.mode.as_str()
        );
    }
    if settings.node_ipc(&program) {
        if settings.ipc == "auto" {
            tracing::info!(
                "a node program: workers get Node's cluster channel, every server.listen() is served by \
                 forkline's primary (--ipc none to opt out)"
            );
        }
    } else {
        hints::at_start(settings.mode, &program, !settings.listen.is_empty());
    }
    let sets_socket_files = settings.socket_mode.is_some() || settings.socket_owner.is_some();
    let binds_unix = activation.listeners.is_empty()
        && settings
            .listen
            .iter()
            .any(|l| l.kind == forkline::SocketKind::Unix);
    if sets_socket_files && !binds_unix {
        tracing::warn!(
            "--socket-mode and --socket-owner apply to the unix: socket files forkline creates, \
             and it creates none here"
        );
    }
    if !activation.listeners.is_empty() {
        let addresses: Vec<String> = settings.listen.iter().map(|a| a.to_string()).collect();
        let from = if activation.upgrade {
            "upgrade: serving on the sockets the old primary passed"
        } else {
            "socket activation: serving on the sockets passed by the service manager"
        };
        tracing::info!(
            sockets = %addresses.join(", "),
            names = %activation.names.join(":"),
            "{from}"
        );
        if !asked_for.is_empty() && asked_for != settings.listen {
            tracing::info!("socket activation: --listen addresses are not bound");
        }
    }

    let exe = std::env::current_exe()
        .map_err(|e| CliError::Runtime(format!("cannot find the forkline executable: {e}")))?;
    let mut opts = settings.cluster_options(exe, &program, uid, gid);
    opts.unix_owner = socket_owner;
    let upgrade = activation.upgrade;
    opts.inherited = activation.sockets;
    opts.inherited_names = activation.names;
    // A new primary (`forkline upgrade`) talks to systemd as this one does.
    if let Some(notifier) = &notifier {
        opts.upgrade_env = notifier
            .inherited
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Runtime(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(supervise(opts, &settings, notifier, upgrade))
}

/// Looks up `--user` and `--group`. Without `--group`, workers get the user's primary group.
fn user_and_group(
    user: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), CliError> {
    use nix::unistd::{Gid, Group, Uid, User};
    let user_entry = match user {
        None => None,
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(id) => User::from_uid(Uid::from_raw(id)),
                Err(_) => User::from_name(name),
            };
            match found {
                Ok(Some(entry)) => Some(entry),
                _ => return Err(CliError::Usage(format!("--user: unknown user `{name}`"))),
            }
        }
    };
    let gid = match group {
        None => user_entry.as_ref().map(|u| u.gid.as_raw()),
        Some(name) => {
            let found = match name.parse::<u32>() {
                Ok(id) => Group::from_gid(Gid::from_raw(id)),
                Err(_) => Group::from_name(name),
            };
            match found {
                Ok(Some(entry)) => Some(entry.gid.as_raw()),
                _ => return Err(CliError::Usage(format!("--group: unknown group `{name}`"))),
            }
        }
    };
    let uid = user_entry.map(|u| u.uid.as_raw());
    let me = Uid::effective();
    let switching_user = uid.is_some_and(|u| u != me.as_raw());
    let switching_group = gid.is_some_and(|g| g != Gid::effective().as_raw());
    if !me.is_root() && (switching_user || switching_group) {
        return Err(CliError::Usage(format!(
            "--user/--group: only root can run workers as another user or group (forkline runs as uid {me})"
        )));
    }
    Ok((uid, gid))
}

/// Looks up `--socket-owner USER[:GROUP]`: names in the user and group databases, numbers as
/// they are (as chown(1) takes them). Without GROUP, the user's primary group. Only root may
/// give a file to another user, or to a group it is not a member of.
fn socket_owner(owner: &SocketOwner, source: Source) -> Result<(u32, u32), CliError> {
    use nix::unistd::{getgroups, Gid, Group, Uid, User};
    let origin = match source {
        Source::Env(var) => format!(" (from environment variable {var})"),
        Source::File => " (from the config file)".into(),
        Source::Flag | Source::Default => String::new(),
    };
    let usage = |why: String| CliError::Usage(format!("--socket-owner {owner}{origin}: {why}"));
    let (uid, entry) = match owner.user.parse::<u32>() {
        Ok(uid) => (uid, User::from_uid(Uid::from_raw(uid)).ok().flatten()),
        Err(_) => match User::from_name(&owner.user) {
            Ok(Some(entry)) => (entry.uid.as_raw(), Some(entry)),
            _ => return Err(usage(format!("unknown user `{}`", owner.user))),
        },
    };
    let gid = match &owner.group {
        None => match &entry {
            Some(entry) => entry.gid.as_raw(),
            None => {
                return Err(usage(format!(
                    "uid {uid} has no entry in the user database, hence no primary group: \
                     write {uid}:GROUP"
                )))
            }
        },
        Some(group) => match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => match Group::from_name(group) {
                Ok(Some(entry)) => entry.gid.as_raw(),
                _ => return Err(usage(format!("unknown group `{group}`"))),
            },
        },
    };
    let me = Uid::effective();
    if !me.is_root() {
        if uid != me.as_raw() {
            return Err(usage(format!(
                "only root can give socket files to another user (forkline runs as uid {me})"
            )));
        }
        let member = gid == Gid::effective().as_raw()
            || getgroups().is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)));
        if !member {
            return Err(usage(format!(
                "only root can give socket files to a group forkline (uid {me}) is not a member \
                 of (gid {gid})"
            )));
        }
    }
    Ok((uid, gid))
}

/// A start error, naming a listen address the way the user wrote it, or the cluster that
/// already serves our control socket.
fn start_error(e: forkline::Error, specs: &[ListenSpec], settings: &Settings) -> CliError {
    if let forkline::Error::Listen { address, source } = &e {
        let control = settings.control().display().to_string();
        if *address == control {
            if source.kind() == std::io::ErrorKind::AddrInUse {
                return CliError::Runtime(format!(
                    "a cluster named `{}` is already running: its control socket is {control} \
                     (give this one another --name or --control)",
                    settings.name()
                ));
            }
            return CliError::Runtime(format!(
                "cannot serve the control socket {control}: {source}"
            ));
        }
        if settings.metrics.as_ref() == Some(address) {
            return CliError::Runtime(format!("cannot serve --metrics on {address}: {source}"));
        }
        if let Some(spec) = specs.iter().find(|s| &s.address == address) {
            let shown = ListenAddr::unnamed(spec.kind, spec.address.clone());
            return CliError::Runtime(format!("cannot listen on {shown}: {source}"));
        }
    }
    error::from_library(e)
}

/// Puts the sockets forkline bound itself in systemd's fd store, when the service has one, so
/// a restart gets them back. Sockets it was given (socket activation, the fd store itself, an
/// old primary's) are not stored again.
fn store_sockets(cluster: &Cluster, notifier: Option<&Notifier>) {
    let Some(notifier) = notifier.filter(|n| n.fd_store) else {
        return;
    };
    for (name, socket) in cluster.listening_sockets() {
        if let Err(e) = notifier.store_fd(&name, std::os::fd::AsFd::as_fd(&*socket)) {
            tracing::warn!(%name, error = %e, "could not put the socket in systemd's fd store");
        }
    }
}

/// Starts the cluster and follows it until it stops; `upgrade`: started by an old primary's
/// upgrade, which tells systemd when this one takes over.
async fn supervise(
    opts: ClusterOptions,
    settings: &Settings,
    notifier: Option<Notifier>,
    upgrade: bool,
) -> Result<i32, CliError> {
    let specs = opts.listeners.clone();
    let activated = !opts.inherited.is_empty();
    let watchdog_every = notifier.as_ref().and_then(|n| n.watchdog_every);
    let cluster = ClusterBuilder::from_options(opts)
        .start()
        .await
        .map_err(|e| start_error(e, &specs, settings))?;
    let command: Vec<String> = settings
        .command
        .iter()
        .map(|w| w.to_string_lossy().into_owned())
        .collect();
    tracing::info!(
        workers = settings.workers.resolve(),
        mode = settings.mode.as_str(),
        command = %command.join(" "),
        "forkline started"
    );
    tracing::info!(
        "control socket: {} (forkline status {})",
        settings.control().display(),
        settings.name()
    );
    hints::watch(cluster.clone(), settings.mode);
    if !activated {
        store_sockets(&cluster, notifier.as_ref());
    }
    let addresses = cluster.listen_addresses();
    if !addresses.is_empty() {
        tracing::info!(
            "listening on {} ({})",
            addresses.join(", "),
            settings.mode.as_str()
        );
    }

    let signal_error = |e: std::io::Error| CliError::Runtime(format!("signal handling: {e}"));
    let mut term = signal(SignalKind::terminate()).map_err(signal_error)?;
    let mut int = signal(SignalKind::interrupt()).map_err(signal_error)?;
    let mut quit = signal(SignalKind::quit()).map_err(signal_error)?;
    let mut watchdog = tokio::time::interval(watchdog_every.unwrap_or(Duration::from_secs(3600)));
    let mut monitor = Monitor::new(cluster.clone(), notifier, upgrade);
    let mut events = cluster.events();
    let mut confirm_at: Option<Instant> = None;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(event) => {
                    monitor.on_event(&event);
                    if confirm_at.is_none() && monitor.nothing_left() {
                        confirm_at = Some(Instant::now() + NOTHING_LEFT_GRACE);
                    }
                }
                None => break,
            },
            _ = term.recv() => monitor.stopping(),
            _ = int.recv() => monitor.stopping(),
            _ = quit.recv() => monitor.stopping(),
            _ = tokio::time::sleep_until(confirm_at.unwrap_or_else(Instant::now)),
                if confirm_at.is_some() =>
            {
                confirm_at = None;
                if monitor.nothing_left() {
                    tracing::info!("no worker is running and none will be restarted; stopping");
                    monitor.stopped_by_us = true;
                    monitor.stopping();
                    cluster.shutdown();
                }
            }
            _ = watchdog.tick(), if watchdog_every.is_some() => monitor.notify("WATCHDOG=1"),
        }
    }
    let shutdown = cluster.wait().await;
    monitor.stopping();
    let mut code = shutdown.exit_code();
    if monitor.stopped_by_us && monitor.failed() {
        code = code.max(1);
    }
    tracing::info!(exit_code = code, "forkline stopped");
    Ok(code)
}

/// Follows the cluster's events: which workers run and are ready, systemd notifications, failed
/// replacements, and whether anything is left to run.
struct Monitor {
    cluster: Cluster,
    notifier: Option<Notifier>,
    ready_logged: bool,
    /// Started by an upgrade: the old primary sends `READY=1` when this one takes over.
    successor: bool,
    stopping_sent: bool,
    last_status: String,
    /// The last replacement (reload, recycling) that failed, until its slot is replaced: while
    /// set, it is the status systemd shows instead of the worker counts.
    failed_replacement: Option<FailedReplacement>,
    /// Per slot: whether its last unplanned exit was a failure.
    last_exit_failed: BTreeMap<usize, bool>,
    gave_up: bool,
    /// True when the primary stopped because no worker was left to run.
    stopped_by_us: bool,
    /// Set once a new primary took over (`forkline upgrade`): systemd hears only from it.
    handed_over: bool,
}

impl Monitor {
    fn new(cluster: Cluster, notifier: Option<Notifier>, successor: bool) -> Self {
        Self {
            cluster,
            notifier,
            ready_logged: false,
            successor,
            stopping_sent: false,
            last_status: String::new(),
            failed_replacement: None,
            last_exit_failed: BTreeMap::new(),
            gave_up: false,
            stopped_by_us: false,
            handed_over: false,
        }
    }

    fn on_event(&mut self, event: &Event) {
        match event {
            Event::Fork { worker } => {
                self.last_exit_failed.remove(&worker.id());
            }
            Event::Ready { .. } if !self.ready_logged && self.cluster.all_ready() => {
                self.ready_logged = true;
                tracing::info!(workers = self.cluster.target(), "all workers ready");
                // Started by an upgrade: the old primary tells systemd, with MAINPID=.
                if !self.successor {
                    self.notify("READY=1");
                }
            }
            Event::Exit {
                worker,
                code,
                signal,
                exited_after_disconnect: false,
                ..
            } => {
                let failed = *code != Some(0) || signal.is_some();
                self.last_exit_failed.insert(worker.id(), failed);
            }
            // The old worker of a replacement that took over leaves on purpose.
            Event::Exit {
                worker,
                exited_after_disconnect: true,
                ..
            } if self.replaced(worker) => self.failed_replacement = None,
            Event::GaveUp { .. } => self.gave_up = true,
            Event::ReplaceFailed {
                slot,
                purpose,
                reason,
            } => self.replace_failed(*slot, *purpose, reason),
            Event::ReloadStarted => self.notify(&format!(
                "RELOADING=1\n{}\nSTATUS=reloading",
                systemd::monotonic_usec()
            )),
            Event::ReloadFinished { .. } => self.notify("READY=1"),
            Event::UpgradeStarted { pid } => self.notify(&format!(
                "RELOADING=1\n{}\nSTATUS=upgrading: new primary {pid} starting",
                systemd::monotonic_usec()
            )),
            Event::Upgraded { pid } => {
                self.notify(&format!(
                    "MAINPID={pid}\nREADY=1\nSTATUS=upgraded: primary {pid} took over"
                ));
                self.handed_over = true;
            }
            Event::UpgradeFailed { reason } => {
                self.notify("READY=1");
                self.last_status = format!("upgrade failed: the new primary {reason}");
                self.notify(&format!("STATUS={}", self.last_status));
                return;
            }
            _ => {}
        }
        self.update_status();
    }

    /// Keeps a replacement that failed as systemd's status until its slot is replaced (the
    /// library logs it: `reload failed: slot N: ...`). A replacement cancelled because the
    /// cluster is stopping is no failure.
    fn replace_failed(&mut self, slot: usize, purpose: Replacement, reason: &ReplaceFailure) {
        let purpose = purpose.name();
        if *reason == ReplaceFailure::Cancelled {
            return;
        }
        self.failed_replacement = Some(FailedReplacement {
            slot,
            status: format!(
                "{purpose} failed at slot {slot}: the new worker {reason}; the old worker keeps \
                 serving"
            ),
        });
    }

    /// True when `worker`, stopped on purpose, is the old worker of a replacement that took
    /// over: a newer worker (unique ids grow with every fork) is now current in the slot whose
    /// last replacement failed. (A failed replacement's new worker is newer than the current.)
    fn replaced(&self, worker: &WorkerHandle) -> bool {
        let Some(failed) = &self.failed_replacement else {
            return false;
        };
        failed.slot == worker.id()
            && self
                .cluster
                .worker(worker.id())
                .is_some_and(|current| current.unique_id() > worker.unique_id())
    }

    /// Workers ready and workers running, as the cluster sees them now.
    fn counts(&self) -> (usize, usize) {
        let workers = self.cluster.workers();
        let ready = workers
            .iter()
            .filter(|w| w.state() == WorkerState::Ready)
            .count();
        (ready, workers.len())
    }

    /// True when no worker runs and no restart is due: the cluster has nothing left to do.
    fn nothing_left(&self) -> bool {
        !self.cluster.is_stopping()
            && self.cluster.workers().is_empty()
            && !self.cluster.restarts_pending()
    }

    /// Whether the workers' own exits amount to a failure.
    fn failed(&self) -> bool {
        self.gave_up || self.last_exit_failed.values().any(|&failed| failed)
    }

    fn update_status(&mut self) {
        if self.notifier.is_none() || self.stopping_sent {
            return;
        }
        let status = match &self.failed_replacement {
            Some(failed) => failed.status.clone(),
            None => {
                let (ready, running) = self.counts();
                format!("{ready} of {running} workers ready")
            }
        };
        if status != self.last_status {
            self.notify(&format!("STATUS={status}"));
            self.last_status = status;
        }
    }

    fn stopping(&mut self) {
        if !self.stopping_sent {
            self.stopping_sent = true;
            self.notify("STOPPING=1\nSTATUS=stopping");
        }
    }

    fn notify(&self, state: &str) {
        if self.handed_over {
            return;
        }
        if let Some(notifier) = &self.notifier {
            notifier.notify(state);
        }
    }
}

/// A replacement that failed, as systemd is told about it.
struct FailedReplacement {
    /// The slot whose new worker failed.
    slot: usize,
    /// The `STATUS=` text: `reload failed at slot 1: the new worker exited with code 1; ...`.
    status: String,
}
