//! The settings of a cluster, in one struct whose field list is written once: each field is a
//! flag with its environment variable (clap), a key of the config file and a line of
//! `check-config` (serde), and what `run` reads. [`layers`] merges them with figment, [`check`]
//! refuses combinations no single value gets wrong, [`cluster_options`] turns them into the
//! library's options, and [`to_toml`] spells them back for `check-config`.

mod check;
mod cluster_options;
mod layers;
mod to_toml;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::builder::BoolishValueParser;
use clap::{ArgAction, Args, ValueEnum};
use figment::value::{Dict, Value};
use forkline::{Balance, Mode, Readiness, RestartPolicy};
use serde::{Deserialize, Serialize};

use crate::parse::{self, ListenAddr, SocketMode, SocketOwner, Workers};

pub use layers::Source;

/// Every setting of `forkline run` and `check-config`. Parsed by clap, the fields hold the
/// flags, the environment variables and the defaults; [`Settings::resolve`] puts the config
/// file under the first two. A field's config key is its long flag name.
#[derive(Debug, Clone, Args, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Settings {
    /// The worker command and its arguments: the words after `--`, else the file's `command`
    /// (may be empty: `run` refuses that).
    #[arg(skip)]
    #[serde(default, with = "parse::command")]
    pub command: Vec<OsString>,

    /// Number of workers, or `max` for one per core
    #[arg(short = 'w', long, env = "WEB_CONCURRENCY", value_name = "N|max",
          value_parser = parse::workers, default_value = "max")]
    pub workers: Workers,

    /// Address to listen on: HOST:PORT, [IPv6]:PORT, unix:/path or udp://HOST:PORT, with an
    /// optional NAME= before it for LISTEN_FDNAMES (web=0.0.0.0:8080; printable ASCII, no `:`
    /// or `/`) (repeatable, or comma-separated)
    #[arg(short = 'l', long, env = "FORKLINE_LISTEN", value_name = "[NAME=]ADDR",
          value_delimiter = ',', value_parser = parse::listen_addr)]
    #[serde(default, with = "parse::text_list")]
    pub listen: Vec<ListenAddr>,

    /// TCP_NODELAY on the TCP listeners forkline binds, inherited by every connection, so a
    /// response written in pieces is not held back by Nagle's algorithm (like systemd's
    /// NoDelay=)
    #[arg(long, env = "FORKLINE_TCP_NODELAY", value_name = "BOOL", action = ArgAction::Set,
          value_parser = BoolishValueParser::new(), default_value = "true")]
    pub tcp_nodelay: bool,

    /// Permissions of the unix: socket files forkline creates, in octal (660 or 0660)
    /// [default: what the umask leaves]
    #[arg(long, env = "FORKLINE_SOCKET_MODE", value_name = "MODE",
          value_parser = parse::socket_mode)]
    #[serde(default, with = "parse::opt_text")]
    pub socket_mode: Option<SocketMode>,

    /// Owner of the unix: socket files forkline creates: USER or USER:GROUP, names or numbers
    /// (without GROUP, the user's primary group; another user needs root) [default: forkline's]
    #[arg(long, env = "FORKLINE_SOCKET_OWNER", value_name = "USER[:GROUP]",
          value_parser = parse::socket_owner)]
    #[serde(default, with = "parse::opt_text")]
    pub socket_owner: Option<SocketOwner>,

    /// How connections reach workers: shared (one socket, every worker accepts), reuseport
    /// (a SO_REUSEPORT socket per worker), steer (a SO_REUSEPORT socket per worker, and a BPF
    /// program picks each connection's worker in the kernel, round-robin over the ready ones;
    /// reuseport where BPF is refused), proxy (each worker listens on its own loopback PORT,
    /// the primary relays), round-robin (the primary accepts and hands connections to workers
    /// built on the forkline library)
    #[arg(long, env = "FORKLINE_MODE", value_name = "MODE", value_parser = parse::mode,
          default_value = "shared")]
    #[serde(with = "parse::text")]
    pub mode: Mode,

    /// Which worker gets the next connection in proxy, round-robin and steer modes:
    /// round-robin, least-conn or ip-hash (steer mode: not ip-hash)
    #[arg(long, env = "FORKLINE_BALANCE", value_name = "STRATEGY", value_parser = parse::balance,
          default_value = "round-robin")]
    #[serde(with = "parse::text")]
    pub balance: Balance,

    /// The channel workers get: node (Node's own cluster channel: an unmodified Node program is
    /// a cluster worker whose every server.listen() is served by forkline's primary: a socket
    /// of its own in shared, reuseport and steer modes, connections one by one in round-robin;
    /// not in proxy mode; --listen is then optional), none, or auto (node when the program is
    /// node and the mode is not proxy)
    #[arg(long, env = "FORKLINE_IPC", value_name = "PROTOCOL", default_value = "auto",
          value_parser = ["auto", "none", "node"])]
    pub ipc: String,

    /// Shared, reuseport and steer modes: a worker's own bind() of a TCP --listen address gets
    /// forkline's socket for it instead of EADDRINUSE (seccomp; the worker runs with
    /// no_new_privs); false leaves binds alone
    #[arg(long, env = "FORKLINE_TRAP_BIND", value_name = "BOOL", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), default_value = "true")]
    pub trap_bind: bool,

    /// Proxy mode: steer each new connection in the kernel straight to a ready worker's own
    /// listener (SK_LOOKUP; round-robin only), the relay taking only what it misses; false
    /// relays every connection (as where the kernel refuses BPF)
    #[arg(long, env = "FORKLINE_PROXY_KERNEL", value_name = "BOOL", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), default_value = "true")]
    pub proxy_kernel: bool,

    /// Proxy mode: how long a new connection waits for some worker to be up (all of them
    /// restarting, say) before it is closed
    #[arg(long, env = "FORKLINE_PROXY_QUEUE_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration, default_value = "5s")]
    #[serde(with = "parse::text")]
    pub proxy_queue_timeout: Duration,

    /// Round-robin: connections handed to a worker that leaves them unread this long (it is
    /// stopped, or its event loop hangs) are taken back and served by the others
    #[arg(long, env = "FORKLINE_HANDOFF_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration, default_value = "10s")]
    #[serde(with = "parse::text")]
    pub handoff_timeout: Duration,

    /// Name shown in log prefixes [NAME:ID PID], and the name the control commands know the
    /// cluster by [default: the command's file name]
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

    /// /readyz answers 200 only while every worker is ready (by default, while one is)
    #[arg(long, env = "FORKLINE_READYZ_ALL", value_name = "BOOL", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), default_value = "false")]
    pub readyz_all: bool,

    /// Extra environment variable for workers (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse::env_pair)]
    #[serde(default, with = "parse::env_table")]
    pub env: Vec<(String, String)>,

    /// Working directory of workers
    #[arg(long, env = "FORKLINE_CWD", value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Run workers as this user (name or uid; needs root)
    #[arg(long, env = "FORKLINE_USER", value_name = "USER")]
    #[serde(default, with = "parse::opt_text")]
    pub user: Option<String>,

    /// Run workers as this group (name or gid) [default: the user's primary group]
    #[arg(long, env = "FORKLINE_GROUP", value_name = "GROUP")]
    #[serde(default, with = "parse::opt_text")]
    pub group: Option<String>,

    /// How long workers get to finish after SIGTERM before SIGKILL
    #[arg(long, env = "FORKLINE_GRACEFUL_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration, default_value = "30s")]
    #[serde(with = "parse::text")]
    pub graceful_timeout: Duration,

    /// On SIGTERM/SIGINT, stay a lame duck this long before the graceful stop: /readyz answers
    /// 503 at once and the workers keep serving (instead of a Kubernetes preStop sleep); a
    /// second SIGTERM ends it early
    #[arg(long, env = "FORKLINE_SHUTDOWN_DELAY", value_name = "DURATION",
          value_parser = parse::duration, default_value = "0s")]
    #[serde(with = "parse::text")]
    pub shutdown_delay: Duration,

    /// Before a worker is killed for not answering (watchdog, graceful timeout), run CMD with
    /// `sh -c`, {pid} and {slot} filled in (py-spy dump --pid {pid}, kill -QUIT {pid}): its
    /// output, cut at 10 s, goes to the log and `forkline logs`, after the worker's wchan and
    /// kernel stack
    #[arg(long, env = "FORKLINE_ON_HANG", value_name = "CMD")]
    #[serde(default, with = "parse::opt_text")]
    pub on_hang: Option<String>,

    /// Pin the worker of slot i to one CPU, the i-th of those forkline may use (round-robin
    /// over them); a replacement runs on its slot's CPU
    #[arg(long, env = "FORKLINE_CPU_AFFINITY", value_name = "BOOL", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), default_value = "false")]
    pub cpu_affinity: bool,

    /// When a worker that exited is started again: always, on-failure or never
    #[arg(long, env = "FORKLINE_RESTART", value_name = "POLICY", value_parser = parse::restart,
          default_value = "always")]
    #[serde(with = "parse::text")]
    pub restart: RestartPolicy,

    /// A worker that lived this long counts as stable: it is restarted at once and its
    /// backoff resets
    #[arg(long, env = "FORKLINE_MIN_UPTIME", value_name = "DURATION",
          value_parser = parse::duration, default_value = "5s")]
    #[serde(with = "parse::text")]
    pub min_uptime: Duration,

    /// Give up on a worker slot after this many quick deaths in a row [default: never]
    #[arg(long, env = "FORKLINE_MAX_RESTARTS", value_name = "N")]
    pub max_restarts: Option<u32>,

    /// When a new worker counts as ready: notify (it sends READY=1 on NOTIFY_SOCKET), listen
    /// (its socket is up; in proxy mode, its PORT accepts), online (started), delay:DURATION,
    /// or none
    #[arg(long, env = "FORKLINE_READY", value_name = "WHEN", value_parser = parse::ready,
          default_value = "online")]
    #[serde(with = "parse::text")]
    pub ready: Readiness,

    /// How long a new worker may take to become ready
    #[arg(long, env = "FORKLINE_READY_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration, default_value = "30s")]
    #[serde(with = "parse::text")]
    pub ready_timeout: Duration,

    /// How long a replacement (rolling restart, recycling) must stay alive once ready before
    /// it takes over and the old worker is stopped; one that exits sooner is a failed
    /// replacement, and the old worker keeps serving
    #[arg(long, env = "FORKLINE_SETTLE_TIME", value_name = "DURATION",
          value_parser = parse::duration, default_value = "1s")]
    #[serde(with = "parse::text")]
    pub settle_time: Duration,

    /// How long a new primary (`forkline upgrade`, SIGUSR2) may take to get its workers ready
    /// before the upgrade is called failed and the running primary carries on
    #[arg(long, env = "FORKLINE_UPGRADE_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration, default_value = "60s")]
    #[serde(with = "parse::text")]
    pub upgrade_timeout: Duration,

    /// Kill and replace a worker that, once ready, goes this long without sending WATCHDOG=1 on
    /// its NOTIFY_SOCKET (workers find it in WATCHDOG_USEC) [default: off]
    #[arg(long, env = "FORKLINE_WORKER_TIMEOUT", value_name = "DURATION",
          value_parser = parse::duration)]
    #[serde(default, with = "parse::opt_text")]
    pub worker_timeout: Option<Duration>,

    /// Round-robin mode: once connections queue up, and while it measurably pays, accept them
    /// at most this far apart, all at once, instead of waking up for each; 0 turns it off (the
    /// environment variable FORKLINE_ACCEPT_COALESCE_US takes microseconds)
    #[arg(long, value_name = "DURATION", value_parser = parse::duration,
          default_value = "500us")]
    #[serde(with = "parse::text")]
    pub accept_coalesce: Duration,

    /// Round-robin mode: threads that accept and hand out each listener's connections
    /// [default: 1 below 4 workers, then one per 4 workers, 2 to 8, at most the CPUs]
    #[arg(long, env = "FORKLINE_ACCEPT_THREADS", value_name = "N")]
    pub accept_threads: Option<NonZeroUsize>,

    /// Recycle a worker after it was handed this many connections (proxy and round-robin
    /// modes) [default: off]
    #[arg(long, env = "FORKLINE_MAX_REQUESTS", value_name = "N")]
    pub max_requests: Option<NonZeroU64>,

    /// Add up to this many to --max-requests, per worker, so workers do not all recycle at
    /// once
    #[arg(
        long,
        env = "FORKLINE_MAX_REQUESTS_JITTER",
        value_name = "J",
        default_value = "0"
    )]
    pub max_requests_jitter: u64,

    /// Recycle a worker whose resident memory stays above SIZE (like 512M or 1G; K, M, G, T
    /// are binary multiples) [default: off]
    #[arg(long, env = "FORKLINE_MAX_MEMORY", value_name = "SIZE", value_parser = parse::size)]
    #[serde(default, with = "parse::opt_text")]
    pub max_memory: Option<ByteSize>,

    /// Prefix each line of worker output with [NAME:ID PID]
    #[arg(long, env = "FORKLINE_LOG_PREFIX", value_name = "BOOL", action = ArgAction::Set,
          num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = BoolishValueParser::new(), default_value = "true",
          overrides_with = "no_log_prefix")]
    pub log_prefix: bool,

    /// Pass worker output through untouched (the same as --log-prefix=false)
    #[arg(long, overrides_with = "log_prefix")]
    #[serde(skip)]
    pub no_log_prefix: bool,

    /// How forkline writes its own log lines: text, or json (one object a line)
    #[arg(
        long,
        env = "FORKLINE_LOG_FORMAT",
        value_name = "FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,

    /// Which of forkline's own log lines are written: a level (error, warn, info, debug,
    /// trace) or tracing filter directives (forkline=debug,info); RUST_LOG when none of the
    /// flag, its variable and the config file sets it
    #[arg(long, env = "FORKLINE_LOG_LEVEL", value_name = "LEVEL", value_parser = parse::log_level,
          default_value = "info")]
    #[serde(deserialize_with = "parse::log_filter")]
    pub log_level: String,

    /// Read settings from this TOML file (flags and environment variables override it)
    #[arg(short = 'c', long, env = "FORKLINE_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Where each setting's value came from, by key (filled by [`Settings::resolve`]).
    #[arg(skip)]
    #[serde(skip)]
    pub sources: BTreeMap<String, Source>,
}

/// The format of forkline's own log lines (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl From<LogFormat> for forkline::LogFormat {
    fn from(format: LogFormat) -> forkline::LogFormat {
        match format {
            LogFormat::Text => forkline::LogFormat::Text,
            LogFormat::Json => forkline::LogFormat::Json,
        }
    }
}

impl Settings {
    /// Where `key`'s value came from.
    pub fn source(&self, key: &str) -> Source {
        self.sources.get(key).cloned().unwrap_or(Source::Default)
    }

    /// The cluster's name (the command's file name unless set).
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("worker")
    }

    /// The control socket's path.
    pub fn control(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| crate::control::default_path(self.name()))
    }

    /// Every setting that has a value, as figment values by config key.
    fn values(&self) -> Dict {
        Value::serialize(self)
            .ok()
            .and_then(Value::into_dict)
            .unwrap_or_default()
    }

    /// The settings' flags, in the order of `--help`.
    fn flags() -> clap::Command {
        Self::augment_args(clap::Command::new("forkline"))
    }
}
