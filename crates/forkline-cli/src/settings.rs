//! The effective settings of a cluster, merged from four layers — flags, then environment
//! variables (`WEB_CONCURRENCY`, `FORKLINE_*`), then the config file, then defaults — with the
//! layer each value came from, and their translation into the library's `ClusterOptions`.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use forkline::{Backoff, Balance, ClusterOptions, ListenSpec, Mode, Readiness, RestartPolicy};

use crate::config::{self, FileSettings};
use crate::error::CliError;
use crate::parse::{self, ListenAddr, SocketOwner, Workers};

/// The settings flags shared by `run` and `check-config`. Every one is optional: a flag not
/// given falls back to its environment variable, then to the config file, then to a default.
#[derive(Debug, Clone, Default, Args)]
pub struct SettingsArgs {
    /// Number of workers, or `max` for one per core [default: cores]
    #[arg(short = 'w', long, env = "WEB_CONCURRENCY", value_name = "N|max",
          value_parser = parse::workers)]
    pub workers: Option<Workers>,

    /// Address to listen on: HOST:PORT, [IPv6]:PORT, unix:/path or udp://HOST:PORT, with an
    /// optional NAME= before it for LISTEN_FDNAMES (web=0.0.0.0:8080; printable ASCII, no `:`
    /// or `/`) (repeatable, or comma-separated)
    #[arg(short = 'l', long, env = "FORKLINE_LISTEN", value_name = "[NAME=]ADDR",
          value_delimiter = ',', value_parser = parse::listen_addr)]
    pub listen: Vec<ListenAddr>,

    /// TCP_NODELAY on the TCP listeners forkline binds, inherited by every connection, so a
    /// response written in pieces is not held back by Nagle's algorithm (like systemd's
    /// NoDelay=) [default: true]
    #[arg(long, env = "FORKLINE_TCP_NODELAY", value_name = "BOOL",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub tcp_nodelay: Option<bool>,

    /// Permissions of the unix: socket files forkline creates, in octal (660 or 0660)
    /// [default: what the umask leaves]
    #[arg(long, env = "FORKLINE_SOCKET_MODE", value_name = "MODE",
          value_parser = parse::socket_mode)]
    pub socket_mode: Option<u32>,

    /// Owner of the unix: socket files forkline creates: USER or USER:GROUP, names or numbers
    /// (without GROUP, the user's primary group; another user needs root) [default: forkline's]
    #[arg(long, env = "FORKLINE_SOCKET_OWNER", value_name = "USER[:GROUP]",
          value_parser = parse::socket_owner)]
    pub socket_owner: Option<SocketOwner>,

    /// How connections reach workers: shared (one socket, every worker accepts), reuseport
    /// (a SO_REUSEPORT socket per worker), proxy (each worker listens on its own loopback
    /// PORT, the primary relays), round-robin (the primary accepts and hands connections to
    /// workers built on the forkline library) [default: shared]
    #[arg(long, env = "FORKLINE_MODE", value_name = "MODE", value_parser = parse::mode)]
    pub mode: Option<Mode>,

    /// Which worker gets the next connection in proxy and round-robin modes:
    /// round-robin, least-conn or ip-hash [default: round-robin]
    #[arg(long, env = "FORKLINE_BALANCE", value_name = "STRATEGY", value_parser = parse::balance)]
    pub balance: Option<Balance>,

    /// Proxy mode: how long a new connection waits for some worker to be up (all of them
    /// restarting, say) before it is closed [default: 5s]
    #[arg(long, env = "FORKLINE_PROXY_QUEUE_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration)]
    pub proxy_queue_timeout: Option<Duration>,

    /// Round-robin: connections handed to a worker that leaves them unread this long (it is
    /// stopped, or its event loop hangs) are taken back and served by the others [default: 10s]
    #[arg(long, env = "FORKLINE_HANDOFF_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration)]
    pub handoff_timeout: Option<Duration>,

    /// Name shown in log prefixes [NAME:ID PID] [default: the command's file name]
    #[arg(long, env = "FORKLINE_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// Serve the control socket here (`forkline status` etc.) [default: DIR/NAME.sock, DIR
    /// being $XDG_RUNTIME_DIR/forkline, /run/forkline for root, else $TMPDIR/forkline-UID]
    #[arg(long, env = "FORKLINE_CONTROL", value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve HTTP at HOST:PORT: Prometheus metrics at /metrics, probes at /healthz and /readyz
    /// [default: off]
    #[arg(long, env = "FORKLINE_METRICS", value_name = "HOST:PORT")]
    pub metrics: Option<String>,

    /// Extra environment variable for workers (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse::env_pair)]
    pub env: Vec<(String, String)>,

    /// Working directory of workers
    #[arg(long, env = "FORKLINE_CWD", value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Run workers as this user (name or uid; needs root)
    #[arg(long, env = "FORKLINE_USER", value_name = "USER")]
    pub user: Option<String>,

    /// Run workers as this group (name or gid) [default: the user's primary group]
    #[arg(long, env = "FORKLINE_GROUP", value_name = "GROUP")]
    pub group: Option<String>,

    /// How long workers get to finish after SIGTERM before SIGKILL [default: 30s]
    #[arg(long, env = "FORKLINE_GRACEFUL_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration)]
    pub graceful_timeout: Option<Duration>,

    /// When a worker that exited is started again: always, on-failure or never
    /// [default: always]
    #[arg(long, env = "FORKLINE_RESTART", value_name = "POLICY", value_parser = parse::restart)]
    pub restart: Option<RestartPolicy>,

    /// A worker that lived this long counts as stable: it is restarted at once and its
    /// backoff resets [default: 5s]
    #[arg(long, env = "FORKLINE_MIN_UPTIME", value_name = "DURATION",
          value_parser = parse::duration)]
    pub min_uptime: Option<Duration>,

    /// Give up on a worker slot after this many quick deaths in a row [default: never]
    #[arg(long, env = "FORKLINE_MAX_RESTARTS", value_name = "N")]
    pub max_restarts: Option<u32>,

    /// When a new worker counts as ready: notify (it sends READY=1 on NOTIFY_SOCKET), listen
    /// (its socket is up; in proxy mode, its PORT accepts), online (started), delay:DURATION,
    /// or none [default: online]
    #[arg(long, env = "FORKLINE_READY", value_name = "WHEN", value_parser = parse::ready)]
    pub ready: Option<Readiness>,

    /// How long a new worker may take to become ready [default: 30s]
    #[arg(long, env = "FORKLINE_READY_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration)]
    pub ready_timeout: Option<Duration>,

    /// How long a replacement (rolling restart, recycling) must stay alive once ready before
    /// it takes over and the old worker is stopped; one that exits sooner is a failed
    /// replacement, and the old worker keeps serving [default: 1s]
    #[arg(long, env = "FORKLINE_SETTLE_TIME", value_name = "DURATION",
          value_parser = parse::duration)]
    pub settle_time: Option<Duration>,

    /// Kill and replace a worker that goes this long without sending WATCHDOG=1 on its
    /// NOTIFY_SOCKET (workers find it in WATCHDOG_USEC) [default: off]
    #[arg(long, env = "FORKLINE_WORKER_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration)]
    pub worker_timeout: Option<Duration>,

    /// Round-robin mode: once connections queue up, and while it measurably pays, accept them
    /// at most this far apart, all at once, instead of waking up for each; 0 turns it off (the
    /// environment variable FORKLINE_ACCEPT_COALESCE_US takes microseconds) [default: 500us]
    #[arg(long, value_name = "DURATION", value_parser = parse::duration)]
    pub accept_coalesce: Option<Duration>,

    /// Recycle a worker after it was handed this many connections (proxy and round-robin
    /// modes) [default: off]
    #[arg(long, env = "FORKLINE_MAX_REQUESTS", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_requests: Option<u64>,

    /// Add up to this many to --max-requests, per worker, so workers do not all recycle at
    /// once [default: 0]
    #[arg(long, env = "FORKLINE_MAX_REQUESTS_JITTER", value_name = "J")]
    pub max_requests_jitter: Option<u64>,

    /// Recycle a worker whose resident memory stays above SIZE (like 512M or 1G)
    /// [default: off]
    #[arg(long, env = "FORKLINE_MAX_MEMORY", value_name = "SIZE", value_parser = parse::size)]
    pub max_memory: Option<u64>,

    /// Read settings from this TOML file (flags and environment variables override it)
    #[arg(short = 'c', long, env = "FORKLINE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Prefix each line of worker output with [NAME:ID PID] [default]
    #[arg(long, env = "FORKLINE_LOG_PREFIX", value_name = "BOOL",
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new(),
          overrides_with = "no_log_prefix")]
    pub log_prefix: Option<bool>,

    /// Pass worker output through untouched
    #[arg(long, overrides_with = "log_prefix")]
    pub no_log_prefix: bool,
}

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag (or the command after `--`).
    Flag,
    /// An environment variable.
    Env(&'static str),
    /// The config file.
    File,
    /// forkline's default.
    Default,
}

impl Source {
    fn describe(self) -> String {
        match self {
            Source::Flag => "flag".into(),
            Source::Env(name) => format!("env {name}"),
            Source::File => "config file".into(),
            Source::Default => "default".into(),
        }
    }
}

/// A value and the layer it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Sourced<T> {
    /// The value.
    pub value: T,
    /// Where it came from.
    pub source: Source,
}

/// Every setting of `forkline run`, merged and validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The config file that was read, if any.
    pub config: Option<PathBuf>,
    /// The worker command and its arguments (may be empty: `run` refuses that).
    pub command: Sourced<Vec<OsString>>,
    /// Number of workers.
    pub workers: Sourced<usize>,
    /// Listen addresses.
    pub listen: Sourced<Vec<ListenAddr>>,
    /// TCP_NODELAY on the TCP listeners forkline binds.
    pub tcp_nodelay: Sourced<bool>,
    /// Permissions of the Unix socket files forkline creates.
    pub socket_mode: Sourced<Option<u32>>,
    /// Owner of the Unix socket files forkline creates, as written (looked up by `run`).
    pub socket_owner: Sourced<Option<SocketOwner>>,
    /// Distribution mode.
    pub mode: Sourced<Mode>,
    /// Balancing strategy.
    pub balance: Sourced<Balance>,
    /// Proxy mode: how long a client waits for a worker to be up before it is closed.
    pub proxy_queue_timeout: Sourced<Duration>,
    /// Round-robin: how long handoffs may sit unread before they are taken back.
    pub handoff_timeout: Sourced<Duration>,
    /// Name for log prefixes.
    pub name: Sourced<String>,
    /// The control socket's path.
    pub control: Sourced<PathBuf>,
    /// Where metrics and probes are served, if anywhere.
    pub metrics: Sourced<Option<String>>,
    /// Extra environment for workers: the file's `[env]`, then `--env` flags (later wins).
    pub env: Vec<(String, String)>,
    /// Working directory of workers.
    pub cwd: Sourced<Option<PathBuf>>,
    /// User to run workers as.
    pub user: Sourced<Option<String>>,
    /// Group to run workers as.
    pub group: Sourced<Option<String>>,
    /// Graceful stop timeout.
    pub graceful_timeout: Sourced<Duration>,
    /// Restart policy.
    pub restart: Sourced<RestartPolicy>,
    /// Uptime after which a worker counts as stable.
    pub min_uptime: Sourced<Duration>,
    /// Give up after this many young deaths in a row.
    pub max_restarts: Sourced<Option<u32>>,
    /// Readiness.
    pub ready: Sourced<Readiness>,
    /// Readiness timeout.
    pub ready_timeout: Sourced<Duration>,
    /// How long a ready replacement must stay alive before it takes over.
    pub settle_time: Sourced<Duration>,
    /// Watchdog timeout.
    pub worker_timeout: Sourced<Option<Duration>>,
    /// Round-robin accept coalescing window (zero: off).
    pub accept_coalesce: Sourced<Duration>,
    /// Recycle after this many connections.
    pub max_requests: Sourced<Option<u64>>,
    /// Jitter for `max_requests`.
    pub max_requests_jitter: Sourced<u64>,
    /// Recycle above this resident memory (bytes).
    pub max_memory: Sourced<Option<u64>>,
    /// Prefix worker output.
    pub log_prefix: Sourced<bool>,
}

/// Node's name for the mode variable, honoured after `--mode` and `FORKLINE_MODE`.
const SCHED_POLICY: &str = "FORKLINE_SCHED_POLICY";

/// The mode `FORKLINE_SCHED_POLICY` names (`rr`, `none`, or any `--mode` value), if it is set.
fn sched_policy() -> Result<Option<Mode>, CliError> {
    match std::env::var(SCHED_POLICY) {
        Ok(value) => parse::mode(&value)
            .map(Some)
            .map_err(|e| CliError::Usage(format!("{SCHED_POLICY}: {e}"))),
        Err(_) => Ok(None),
    }
}

/// The window `FORKLINE_ACCEPT_COALESCE_US` sets (zero for off), if it is set.
fn accept_coalesce_env() -> Result<Option<Duration>, CliError> {
    forkline::accept_coalesce_from_env()
        .map(|window| window.map(Option::unwrap_or_default))
        .map_err(|e| CliError::Usage(e.to_string()))
}

/// Picks the first layer that has a value: flag or env (told apart by clap), then the file,
/// then the default.
fn pick<T>(
    matches: &ArgMatches,
    id: &str,
    env: Option<&'static str>,
    cli: Option<T>,
    file: Option<T>,
    default: T,
) -> Sourced<T> {
    if let Some(value) = cli {
        let source = match (matches.value_source(id), env) {
            (Some(ValueSource::EnvVariable), Some(name)) => Source::Env(name),
            _ => Source::Flag,
        };
        return Sourced { value, source };
    }
    match file {
        Some(value) => Sourced {
            value,
            source: Source::File,
        },
        None => Sourced {
            value: default,
            source: Source::Default,
        },
    }
}

/// Like [`pick`], with one more variable, `library_env` (its name and value, parsed already),
/// after the flag and its own variable and before the file: one that the library also reads.
fn pick_after_flag<T>(
    matches: &ArgMatches,
    id: &str,
    env: Option<&'static str>,
    cli: Option<T>,
    library_env: Option<(&'static str, T)>,
    file: Option<T>,
    default: T,
) -> Sourced<T> {
    match (cli, library_env) {
        (None, Some((name, value))) => Sourced {
            value,
            source: Source::Env(name),
        },
        (cli, _) => pick(matches, id, env, cli, file, default),
    }
}

impl Settings {
    /// Merges `args` (with `matches` telling flags from environment variables), the config file
    /// they name (or `config_override`), and the command after `--`.
    pub fn resolve(
        args: &SettingsArgs,
        matches: &ArgMatches,
        command: Vec<OsString>,
        config_override: Option<&Path>,
    ) -> Result<Settings, CliError> {
        let config_path = config_override
            .map(Path::to_path_buf)
            .or_else(|| args.config.clone());
        let file = match &config_path {
            Some(path) => config::load(path).map_err(CliError::Usage)?,
            None => FileSettings::default(),
        };
        let m = matches;
        let command = if !command.is_empty() {
            Sourced {
                value: command,
                source: Source::Flag,
            }
        } else {
            pick(
                m,
                "command",
                None,
                None,
                file.command
                    .clone()
                    .map(|c| c.into_iter().map(OsString::from).collect()),
                Vec::new(),
            )
        };
        let workers = pick(
            m,
            "workers",
            Some("WEB_CONCURRENCY"),
            args.workers,
            file.workers,
            Workers::Max,
        );
        let listen_cli = (!args.listen.is_empty()).then(|| args.listen.clone());
        let default_name = command
            .value
            .first()
            .and_then(|c| Path::new(c).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "worker".into());
        let log_prefix_cli = if args.no_log_prefix {
            Some(false)
        } else {
            args.log_prefix
        };
        let mut log_prefix = pick(
            m,
            "log_prefix",
            Some("FORKLINE_LOG_PREFIX"),
            log_prefix_cli,
            file.log_prefix,
            true,
        );
        if args.no_log_prefix {
            log_prefix.source = Source::Flag;
        }
        let cwd = pick(
            m,
            "cwd",
            Some("FORKLINE_CWD"),
            args.cwd.clone().map(Some),
            file.cwd.clone().map(Some),
            None,
        );
        let cwd = Sourced {
            value: cwd
                .value
                .map(|dir| std::path::absolute(&dir).unwrap_or(dir)),
            source: cwd.source,
        };
        let name = pick(
            m,
            "name",
            Some("FORKLINE_NAME"),
            args.name.clone(),
            file.name.clone(),
            default_name,
        );
        let mut env = file.env.clone();
        env.extend(args.env.iter().cloned());
        let library = ClusterOptions::default();
        Ok(Settings {
            config: config_path,
            workers: Sourced {
                value: workers.value.resolve(),
                source: workers.source,
            },
            listen: pick(
                m,
                "listen",
                Some("FORKLINE_LISTEN"),
                listen_cli,
                file.listen.clone(),
                Vec::new(),
            ),
            tcp_nodelay: pick(
                m,
                "tcp_nodelay",
                Some("FORKLINE_TCP_NODELAY"),
                args.tcp_nodelay,
                file.tcp_nodelay,
                library.tcp_nodelay,
            ),
            socket_mode: pick(
                m,
                "socket_mode",
                Some("FORKLINE_SOCKET_MODE"),
                args.socket_mode.map(Some),
                file.socket_mode.map(Some),
                None,
            ),
            socket_owner: pick(
                m,
                "socket_owner",
                Some("FORKLINE_SOCKET_OWNER"),
                args.socket_owner.clone().map(Some),
                file.socket_owner.clone().map(Some),
                None,
            ),
            mode: pick_after_flag(
                m,
                "mode",
                Some("FORKLINE_MODE"),
                args.mode,
                sched_policy()?.map(|mode| (SCHED_POLICY, mode)),
                file.mode,
                Mode::Shared,
            ),
            balance: pick(
                m,
                "balance",
                Some("FORKLINE_BALANCE"),
                args.balance,
                file.balance,
                Balance::RoundRobin,
            ),
            proxy_queue_timeout: pick(
                m,
                "proxy_queue_timeout",
                Some("FORKLINE_PROXY_QUEUE_TIMEOUT"),
                args.proxy_queue_timeout,
                file.proxy_queue_timeout,
                library.proxy_queue_timeout,
            ),
            handoff_timeout: pick(
                m,
                "handoff_timeout",
                Some("FORKLINE_HANDOFF_TIMEOUT"),
                args.handoff_timeout,
                file.handoff_timeout,
                library.handoff_timeout,
            ),
            control: pick(
                m,
                "control",
                Some("FORKLINE_CONTROL"),
                args.control.clone(),
                file.control.clone(),
                crate::control::default_path(&name.value),
            ),
            metrics: pick(
                m,
                "metrics",
                Some("FORKLINE_METRICS"),
                args.metrics.clone().map(Some),
                file.metrics.clone().map(Some),
                None,
            ),
            name,
            env,
            cwd,
            user: pick(
                m,
                "user",
                Some("FORKLINE_USER"),
                args.user.clone().map(Some),
                file.user.clone().map(Some),
                None,
            ),
            group: pick(
                m,
                "group",
                Some("FORKLINE_GROUP"),
                args.group.clone().map(Some),
                file.group.clone().map(Some),
                None,
            ),
            graceful_timeout: pick(
                m,
                "graceful_timeout",
                Some("FORKLINE_GRACEFUL_TIMEOUT"),
                args.graceful_timeout,
                file.graceful_timeout,
                Duration::from_secs(30),
            ),
            restart: pick(
                m,
                "restart",
                Some("FORKLINE_RESTART"),
                args.restart,
                file.restart,
                RestartPolicy::Always,
            ),
            min_uptime: pick(
                m,
                "min_uptime",
                Some("FORKLINE_MIN_UPTIME"),
                args.min_uptime,
                file.min_uptime,
                Backoff::default().min_uptime,
            ),
            max_restarts: pick(
                m,
                "max_restarts",
                Some("FORKLINE_MAX_RESTARTS"),
                args.max_restarts.map(Some),
                file.max_restarts.map(Some),
                None,
            ),
            ready: pick(
                m,
                "ready",
                Some("FORKLINE_READY"),
                args.ready,
                file.ready,
                Readiness::Online,
            ),
            ready_timeout: pick(
                m,
                "ready_timeout",
                Some("FORKLINE_READY_TIMEOUT"),
                args.ready_timeout,
                file.ready_timeout,
                Duration::from_secs(30),
            ),
            settle_time: pick(
                m,
                "settle_time",
                Some("FORKLINE_SETTLE_TIME"),
                args.settle_time,
                file.settle_time,
                forkline::DEFAULT_SETTLE_TIME,
            ),
            worker_timeout: pick(
                m,
                "worker_timeout",
                Some("FORKLINE_WORKER_TIMEOUT"),
                args.worker_timeout.map(Some),
                file.worker_timeout.map(Some),
                None,
            ),
            accept_coalesce: pick_after_flag(
                m,
                "accept_coalesce",
                None,
                args.accept_coalesce,
                accept_coalesce_env()?.map(|window| (forkline::ENV_ACCEPT_COALESCE_US, window)),
                file.accept_coalesce,
                forkline::DEFAULT_ACCEPT_COALESCE,
            ),
            max_requests: pick(
                m,
                "max_requests",
                Some("FORKLINE_MAX_REQUESTS"),
                args.max_requests.map(Some),
                file.max_requests.map(Some),
                None,
            ),
            max_requests_jitter: pick(
                m,
                "max_requests_jitter",
                Some("FORKLINE_MAX_REQUESTS_JITTER"),
                args.max_requests_jitter,
                file.max_requests_jitter,
                0,
            ),
            max_memory: pick(
                m,
                "max_memory",
                Some("FORKLINE_MAX_MEMORY"),
                args.max_memory.map(Some),
                file.max_memory.map(Some),
                None,
            ),
            log_prefix,
            command,
        })
    }

    /// Checks combinations that no single value can get wrong.
    pub fn check(&self) -> Result<(), CliError> {
        if self.mode.value == Mode::Proxy
            && !self
                .listen
                .value
                .iter()
                .any(|l| l.kind == forkline::SocketKind::Tcp)
        {
            return Err(CliError::Usage(
                "--mode proxy needs a TCP --listen address to relay from".into(),
            ));
        }
        forkline::check_accept_coalesce(self.accept_coalesce.value)
            .map_err(crate::error::from_library)?;
        if self.max_requests_jitter.value > 0 && self.max_requests.value.is_none() {
            return Err(CliError::Usage(
                "--max-requests-jitter needs --max-requests".into(),
            ));
        }
        Ok(())
    }

    /// The library options for these settings. `program` is the resolved worker command;
    /// workers run as `EXE __exec -- PROGRAM ARGS...` (see `cli::exec`), so `exe` is this
    /// binary.
    pub fn cluster_options(
        &self,
        exe: PathBuf,
        program: &Path,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> ClusterOptions {
        let mut args: Vec<OsString> = vec!["__exec".into()];
        if let Some(arg0) = self.command.value.first() {
            args.push("--arg0".into());
            args.push(arg0.clone());
        }
        args.push("--".into());
        args.push(program.as_os_str().to_owned());
        args.extend(self.command.value.iter().skip(1).cloned());
        ClusterOptions {
            workers: self.workers.value,
            exec: exe,
            args,
            env: self
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            cwd: self.cwd.value.clone(),
            stdio: if self.log_prefix.value {
                forkline::WorkerStdio::Prefixed
            } else {
                forkline::WorkerStdio::Inherit
            },
            name: Some(self.name.value.clone()),
            control: Some(self.control.value.clone()),
            metrics: self.metrics.value.clone(),
            uid,
            gid,
            restart: self.restart.value,
            backoff: Backoff {
                min_uptime: self.min_uptime.value,
                max_restarts: self.max_restarts.value,
                ..Backoff::default()
            },
            graceful_timeout: self.graceful_timeout.value,
            handle_signals: true,
            mode: self.mode.value,
            balance: self.balance.value,
            listeners: self
                .listen
                .value
                .iter()
                .map(|l| ListenSpec {
                    kind: l.kind,
                    address: l.address.clone(),
                    name: l.name.clone(),
                })
                .collect(),
            inherited: Vec::new(),
            inherited_names: Vec::new(),
            readiness: self.ready.value,
            ready_timeout: self.ready_timeout.value,
            settle_time: self.settle_time.value,
            accept_coalesce: Some(self.accept_coalesce.value).filter(|w| !w.is_zero()),
            max_requests: self.max_requests.value,
            max_requests_jitter: self.max_requests_jitter.value,
            max_memory: self.max_memory.value,
            worker_timeout: self.worker_timeout.value,
            notify_socket: true,
            tcp_nodelay: self.tcp_nodelay.value,
            unix_mode: self.socket_mode.value,
            // Looked up by `run` (user names), then set there.
            unix_owner: None,
            proxy_queue_timeout: self.proxy_queue_timeout.value,
            handoff_timeout: self.handoff_timeout.value,
            ..ClusterOptions::default()
        }
    }

    /// The settings as a config file that `--config` reads back, each line commented with
    /// where its value came from.
    pub fn to_toml(&self) -> String {
        fn quote(s: &str) -> String {
            toml::Value::String(s.to_string()).to_string()
        }
        fn list<I: IntoIterator<Item = String>>(items: I) -> String {
            let items: Vec<String> = items.into_iter().map(|s| quote(&s)).collect();
            format!("[{}]", items.join(", "))
        }
        let mut out = String::new();
        let mut line = |key: &str, value: Option<String>, source: Source| {
            let value = match value {
                Some(v) => format!("{key} = {v}"),
                None => format!("# {key} is not set"),
            };
            let _ = writeln!(out, "{value:<48} # {}", source.describe());
        };
        line(
            "command",
            (!self.command.value.is_empty()).then(|| {
                list(
                    self.command
                        .value
                        .iter()
                        .map(|w| w.to_string_lossy().into_owned()),
                )
            }),
            self.command.source,
        );
        line(
            "workers",
            Some(self.workers.value.to_string()),
            self.workers.source,
        );
        line(
            "listen",
            Some(list(self.listen.value.iter().map(ToString::to_string))),
            self.listen.source,
        );
        line(
            "tcp-nodelay",
            Some(self.tcp_nodelay.value.to_string()),
            self.tcp_nodelay.source,
        );
        line(
            "socket-mode",
            self.socket_mode
                .value
                .map(|mode| quote(&parse::format_socket_mode(mode))),
            self.socket_mode.source,
        );
        line(
            "socket-owner",
            self.socket_owner
                .value
                .as_ref()
                .map(|owner| quote(&owner.to_string())),
            self.socket_owner.source,
        );
        line(
            "mode",
            Some(quote(self.mode.value.name())),
            self.mode.source,
        );
        line(
            "balance",
            Some(quote(self.balance.value.name())),
            self.balance.source,
        );
        let dur = |d: Duration| quote(&parse::format_duration(d));
        line(
            "proxy-queue-timeout",
            Some(dur(self.proxy_queue_timeout.value)),
            self.proxy_queue_timeout.source,
        );
        line(
            "handoff-timeout",
            Some(dur(self.handoff_timeout.value)),
            self.handoff_timeout.source,
        );
        line("name", Some(quote(&self.name.value)), self.name.source);
        line(
            "control",
            Some(quote(&self.control.value.display().to_string())),
            self.control.source,
        );
        line(
            "metrics",
            self.metrics.value.as_deref().map(quote),
            self.metrics.source,
        );
        line(
            "cwd",
            self.cwd
                .value
                .as_ref()
                .map(|d| quote(&d.display().to_string())),
            self.cwd.source,
        );
        line(
            "user",
            self.user.value.as_deref().map(quote),
            self.user.source,
        );
        line(
            "group",
            self.group.value.as_deref().map(quote),
            self.group.source,
        );
        line(
            "graceful-timeout",
            Some(dur(self.graceful_timeout.value)),
            self.graceful_timeout.source,
        );
        line(
            "restart",
            Some(quote(parse::restart_name(self.restart.value))),
            self.restart.source,
        );
        line(
            "min-uptime",
            Some(dur(self.min_uptime.value)),
            self.min_uptime.source,
        );
        line(
            "max-restarts",
            self.max_restarts.value.map(|n| n.to_string()),
            self.max_restarts.source,
        );
        line(
            "ready",
            Some(quote(&parse::ready_name(self.ready.value))),
            self.ready.source,
        );
        line(
            "ready-timeout",
            Some(dur(self.ready_timeout.value)),
            self.ready_timeout.source,
        );
        line(
            "settle-time",
            Some(dur(self.settle_time.value)),
            self.settle_time.source,
        );
        line(
            "worker-timeout",
            self.worker_timeout.value.map(dur),
            self.worker_timeout.source,
        );
        line(
            "accept-coalesce",
            Some(dur(self.accept_coalesce.value)),
            self.accept_coalesce.source,
        );
        line(
            "max-requests",
            self.max_requests.value.map(|n| n.to_string()),
            self.max_requests.source,
        );
        line(
            "max-requests-jitter",
            Some(self.max_requests_jitter.value.to_string()),
            self.max_requests_jitter.source,
        );
        line(
            "max-memory",
            self.max_memory.value.map(|b| quote(&parse::format_size(b))),
            self.max_memory.source,
        );
        line(
            "log-prefix",
            Some(self.log_prefix.value.to_string()),
            self.log_prefix.source,
        );
        if !self.env.is_empty() {
            out.push_str("\n[env]\n");
            let mut seen = std::collections::BTreeMap::new();
            for (key, value) in &self.env {
                seen.insert(key.clone(), value.clone());
            }
            for (key, value) in seen {
                let key = if key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    key
                } else {
                    quote(&key)
                };
                let _ = writeln!(out, "{key} = {}", quote(&value));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    /// The settings for `ARGS -- true`, as `run` resolves them (no config file).
    fn resolve(args: &[&str]) -> Settings {
        let command = SettingsArgs::augment_args(Command::new("run"));
        let matches = command
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap();
        let parsed = SettingsArgs::from_arg_matches(&matches).unwrap();
        Settings::resolve(&parsed, &matches, vec!["true".into()], None).unwrap()
    }

    fn options(settings: &Settings) -> ClusterOptions {
        settings.cluster_options("/bin/forkline".into(), Path::new("/bin/true"), None, None)
    }

    #[test]
    fn durations_reach_the_cluster_options() {
        let settings = resolve(&[
            "--settle-time",
            "2500ms",
            "--ready-timeout",
            "7s",
            "--graceful-timeout",
            "9s",
        ]);
        let opts = options(&settings);
        assert_eq!(opts.settle_time, Duration::from_millis(2500));
        assert_eq!(opts.ready_timeout, Duration::from_secs(7));
        assert_eq!(opts.graceful_timeout, Duration::from_secs(9));
        assert_eq!(settings.settle_time.source, Source::Flag);
    }

    #[test]
    fn listener_settings_reach_the_cluster_options() {
        let settings = resolve(&[
            "-l",
            "web=127.0.0.1:8080",
            "-l",
            "unix:/tmp/x.sock",
            "--tcp-nodelay",
            "false",
            "--socket-mode",
            "660",
            "--proxy-queue-timeout",
            "1500ms",
        ]);
        let opts = options(&settings);
        let names: Vec<Option<&str>> = opts.listeners.iter().map(|l| l.name.as_deref()).collect();
        assert_eq!(names, [Some("web"), None]);
        assert!(!opts.tcp_nodelay);
        assert_eq!(opts.unix_mode, Some(0o660));
        assert_eq!(opts.proxy_queue_timeout, Duration::from_millis(1500));
    }

    #[test]
    fn listener_settings_default_to_the_library_defaults() {
        if [
            "FORKLINE_TCP_NODELAY",
            "FORKLINE_PROXY_QUEUE_TIMEOUT",
            "FORKLINE_SOCKET_MODE",
        ]
        .iter()
        .any(|var| std::env::var_os(var).is_some())
        {
            return; // set by whoever runs the tests: not the default case
        }
        let opts = options(&resolve(&[]));
        let library = ClusterOptions::default();
        assert!(opts.tcp_nodelay);
        assert_eq!(opts.tcp_nodelay, library.tcp_nodelay);
        assert_eq!(opts.proxy_queue_timeout, library.proxy_queue_timeout);
        assert_eq!(opts.unix_mode, None);
    }

    #[test]
    fn settle_time_defaults_to_the_library_default() {
        if std::env::var_os("FORKLINE_SETTLE_TIME").is_some() {
            return; // set by whoever runs the tests: not the default case
        }
        let settings = resolve(&[]);
        assert_eq!(
            options(&settings).settle_time,
            forkline::DEFAULT_SETTLE_TIME
        );
        assert_eq!(settings.settle_time.source, Source::Default);
    }
}
