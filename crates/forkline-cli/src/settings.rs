//! The settings of a cluster, in one struct whose field list is written once: each field is a
//! flag with its environment variable (clap), a key of the config file and a line of
//! `check-config` (serde), and what `run` reads. [`Settings::resolve`] layers them with figment
//! — defaults, then `RUST_LOG`, the config file, the library's own variables, the variables clap
//! read, the flags — remembering where each value came from, and
//! [`Settings::cluster_options`] turns them into the library's options.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::num::{NonZeroU64, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use clap::builder::BoolishValueParser;
use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Args, ValueEnum};
use figment::error::Kind;
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use forkline::{Backoff, Balance, ClusterOptions, ListenSpec, Mode, Readiness, RestartPolicy};
use serde::{Deserialize, Serialize};

use crate::config::ConfigFile;
use crate::error::CliError;
use crate::parse::{self, ListenAddr, SocketMode, SocketOwner, Text, Workers};

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

/// Where a setting's value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A command-line flag (or the command after `--`).
    Flag,
    /// This environment variable.
    Env(String),
    /// The config file.
    File,
    /// forkline's default.
    Default,
}

/// As `check-config` comments each line: `flag`, `env VAR`, `config file`, `default`.
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Flag => f.write_str("flag"),
            Source::Env(name) => write!(f, "env {name}"),
            Source::File => f.write_str("config file"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One layer of values for figment to merge: where they came from, and the values by key.
#[derive(Clone)]
struct Layer {
    source: Source,
    values: Dict,
}

impl Layer {
    /// A layer of one value.
    fn one(source: Source, key: &str, value: impl Into<Value>) -> Layer {
        Layer {
            source,
            values: Dict::from([(key.to_string(), value.into())]),
        }
    }
}

impl Provider for Layer {
    /// Named as `check-config` names it.
    fn metadata(&self) -> Metadata {
        Metadata::named(self.source.to_string())
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.values.clone()))
    }
}

/// Node's name for the mode variable, honoured after `--mode` and `FORKLINE_MODE`.
const SCHED_POLICY: &str = forkline::protocol::wire::ENV_SCHED_POLICY;

impl Settings {
    /// Merges these flags, environment variables and defaults (`matches` tells which clap
    /// found where) with the config file (`config_override`, else `--config`) and `command`
    /// (the words after `--`, which replace the file's).
    pub fn resolve(
        mut self,
        matches: &ArgMatches,
        command: Vec<OsString>,
        config_override: Option<&Path>,
    ) -> Result<Settings, CliError> {
        if let Some(path) = config_override {
            self.config = Some(path.to_path_buf());
        }
        let file = self.config.as_deref().map(ConfigFile::load).transpose();
        self.command = command;
        self.layered(matches, file.map_err(CliError::Usage)?)
    }

    /// [`Settings::resolve`] with the config file read already.
    fn layered(self, matches: &ArgMatches, file: Option<ConfigFile>) -> Result<Settings, CliError> {
        let (defaults, variables, flags) = self.clap_layers(matches);
        let file_layer = file.as_ref().map(|file| Layer {
            source: Source::File,
            values: file.values(),
        });
        if let Some(layer) = &file_layer {
            // The whole file is checked, values that flags or variables override included:
            // here it goes on top.
            let on_top = std::iter::once(&defaults).chain(&variables);
            merge(on_top.chain([&flags, layer]), file.as_ref())?;
        }
        let layers: Vec<Layer> = std::iter::once(defaults)
            .chain(rust_log())
            .chain(file_layer)
            .chain(library_variables()?)
            .chain(variables)
            .chain([flags])
            .collect();
        let mut settings = merge(&layers, file.as_ref())?;
        for layer in layers {
            for key in layer.values.into_keys() {
                settings.sources.insert(key, layer.source.clone());
            }
        }
        if !self.command.is_empty() {
            // The words as given, not their UTF-8 rendering.
            settings.command = self.command;
        }
        settings.config = self.config;
        let name = settings.name.get_or_insert_with(|| {
            let program = settings.command.first().map(Path::new);
            program
                .and_then(Path::file_name)
                .map_or("worker".into(), |name| name.to_string_lossy().into_owned())
        });
        let control = crate::control::default_path(name);
        settings.control.get_or_insert(control);
        settings.cwd = settings
            .cwd
            .map(|dir| std::path::absolute(&dir).unwrap_or(dir));
        Ok(settings)
    }

    /// The values clap read, by where it found them: its defaults, one layer per environment
    /// variable, and the flags (with the command after `--`).
    fn clap_layers(&self, matches: &ArgMatches) -> (Layer, Vec<Layer>, Layer) {
        let values = Value::serialize(self)
            .ok()
            .and_then(Value::into_dict)
            .unwrap_or_default();
        let layer = |source| Layer {
            source,
            values: Dict::new(),
        };
        let (mut defaults, mut variables, mut flags) =
            (layer(Source::Default), Vec::new(), layer(Source::Flag));
        for arg in Self::augment_args(clap::Command::new("forkline")).get_arguments() {
            let id = arg.get_id().as_str();
            let key = id.replace('_', "-");
            // `--config` and `--no-log-prefix` are no settings of their own.
            let Some(value) = values.get(&key) else {
                continue;
            };
            match (matches.value_source(id), arg.get_env()) {
                (Some(ValueSource::DefaultValue), _) => {
                    defaults.values.insert(key, value.clone());
                }
                (Some(ValueSource::EnvVariable), Some(var)) => {
                    let var = var.to_string_lossy().into_owned();
                    variables.push(Layer::one(Source::Env(var), &key, value.clone()));
                }
                (Some(ValueSource::CommandLine), _) => {
                    flags.values.insert(key, value.clone());
                }
                _ => {}
            }
        }
        if self.no_log_prefix {
            flags.values.insert("log-prefix".into(), false.into());
        }
        if let (false, Some(command)) = (self.command.is_empty(), values.get("command")) {
            flags.values.insert("command".into(), command.clone());
        }
        (defaults, variables, flags)
    }

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

    /// Checks combinations that no single value can get wrong.
    pub fn check(&self) -> Result<(), CliError> {
        if self.mode == Mode::Proxy
            && !self
                .listen
                .iter()
                .any(|l| l.kind == forkline::SocketKind::Tcp)
        {
            return Err(CliError::Usage(
                "--mode proxy needs a TCP --listen address to relay from".into(),
            ));
        }
        if self.mode == Mode::Steer && self.balance == Balance::IpHash {
            return Err(CliError::Usage(
                "--mode steer balances round-robin or least-conn in the kernel; --balance \
                 ip-hash needs the primary to pick (--mode proxy, or round-robin for \
                 forkline-library workers)"
                    .into(),
            ));
        }
        forkline::check_steered_workers(self.mode, self.balance, self.workers.resolve())
            .map_err(crate::error::from_library)?;
        forkline::check_accept_coalesce(self.accept_coalesce)
            .map_err(crate::error::from_library)?;
        if self.max_requests_jitter > 0 && self.max_requests.is_none() {
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
        if let Some(arg0) = self.command.first() {
            args.push("--arg0".into());
            args.push(arg0.clone());
        }
        args.push("--".into());
        args.push(program.as_os_str().to_owned());
        args.extend(self.command.iter().skip(1).cloned());
        ClusterOptions {
            workers: self.workers.resolve(),
            exec: exe,
            args,
            env: self
                .env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            cwd: self.cwd.clone(),
            // Copied line by line either way, so `forkline logs` has them.
            stdio: if self.log_prefix {
                forkline::WorkerStdio::Prefixed
            } else {
                forkline::WorkerStdio::Captured
            },
            log_format: self.log_format.into(),
            log_timestamps: crate::logging::timestamps(),
            name: Some(self.name().to_string()),
            control: Some(self.control()),
            metrics: self.metrics.clone(),
            readyz_requires_all: self.readyz_all,
            uid,
            gid,
            restart: self.restart,
            backoff: Backoff {
                min_uptime: self.min_uptime,
                max_restarts: self.max_restarts,
                ..Backoff::default()
            },
            graceful_timeout: self.graceful_timeout,
            handle_signals: true,
            mode: self.mode,
            balance: self.balance,
            listeners: self
                .listen
                .iter()
                .map(|l| ListenSpec {
                    kind: l.kind,
                    address: l.address.clone(),
                    name: l.name.clone(),
                })
                .collect(),
            inherited: Vec::new(),
            inherited_names: Vec::new(),
            readiness: self.ready,
            ready_timeout: self.ready_timeout,
            settle_time: self.settle_time,
            upgrade_timeout: self.upgrade_timeout,
            accept_coalesce: Some(self.accept_coalesce).filter(|w| !w.is_zero()),
            accept_threads: self.accept_threads.map(NonZeroUsize::get),
            max_requests: self.max_requests.map(NonZeroU64::get),
            max_requests_jitter: self.max_requests_jitter,
            max_memory: self.max_memory.map(|size| size.as_u64()),
            worker_timeout: self.worker_timeout,
            notify_socket: true,
            tcp_nodelay: self.tcp_nodelay,
            unix_mode: self.socket_mode.map(|mode| mode.0),
            // Looked up by `run` (user names), then set there.
            unix_owner: None,
            proxy_queue_timeout: self.proxy_queue_timeout,
            handoff_timeout: self.handoff_timeout,
            ..ClusterOptions::default()
        }
    }

    /// The settings as a config file that `--config` reads back, in the order of `--help`,
    /// each line commented with where its value came from.
    pub fn to_toml(&self) -> String {
        let set = toml::Table::try_from(self).unwrap_or_default();
        let all = Value::serialize(self)
            .ok()
            .and_then(Value::into_dict)
            .unwrap_or_default();
        let flags = Self::augment_args(clap::Command::new("forkline"));
        let keys = std::iter::once("command".to_string()).chain(
            flags
                .get_arguments()
                .map(|arg| arg.get_id().as_str().replace('_', "-")),
        );
        let mut out = String::new();
        for key in keys.filter(|key| all.contains_key(key) && key != "env") {
            let line = match set.get(&key) {
                Some(value) => format!("{key} = {value}"),
                None => format!("# {key} is not set"),
            };
            out.push_str(&format!("{line:<48} # {}\n", self.source(&key)));
        }
        if let Some(env) = set
            .get("env")
            .filter(|env| env.as_table().is_some_and(|t| !t.is_empty()))
        {
            let table = toml::Table::from_iter([("env".to_string(), env.clone())]);
            out.push('\n');
            out.push_str(&toml::to_string(&table).unwrap_or_default());
        }
        out
    }
}

/// Merges `layers`, each over the ones before, into settings.
fn merge<'a>(
    layers: impl IntoIterator<Item = &'a Layer>,
    file: Option<&ConfigFile>,
) -> Result<Settings, CliError> {
    let figment = layers.into_iter().fold(Figment::new(), |figment, layer| {
        figment.merge(layer.clone())
    });
    figment
        .extract()
        .map_err(|e| CliError::Usage(extract_error(e, file)))
}

/// `RUST_LOG`, the log level when neither `--log-level`, its variable nor the file sets one
/// (a filter tracing cannot read is ignored, as tracing ignores it).
fn rust_log() -> Option<Layer> {
    let filter = std::env::var("RUST_LOG").ok()?;
    parse::log_level(&filter).ok()?;
    Some(Layer::one(
        Source::Env("RUST_LOG".into()),
        "log-level",
        filter,
    ))
}

/// Node's `FORKLINE_SCHED_POLICY` (a mode, after `FORKLINE_MODE`) and the library's
/// `FORKLINE_ACCEPT_COALESCE_US` (microseconds), which clap does not read: above the file,
/// below the flags and the variables clap reads.
fn library_variables() -> Result<Vec<Layer>, CliError> {
    let mut layers = Vec::new();
    if let Ok(value) = std::env::var(SCHED_POLICY) {
        let mode =
            parse::mode(&value).map_err(|e| CliError::Usage(format!("{SCHED_POLICY}: {e}")))?;
        layers.push(Layer::one(
            Source::Env(SCHED_POLICY.into()),
            "mode",
            mode.text(),
        ));
    }
    let window =
        forkline::accept_coalesce_from_env().map_err(|e| CliError::Usage(e.to_string()))?;
    if let Some(window) = window {
        let var = Source::Env(forkline::ENV_ACCEPT_COALESCE_US.into());
        let window = window.unwrap_or_default().text();
        layers.push(Layer::one(var, "accept-coalesce", window));
    }
    Ok(layers)
}

/// A figment error as one line; located in the config file when the bad value came from it
/// (the other layers hold values clap or forkline parsed already).
fn extract_error(e: figment::Error, file: Option<&ConfigFile>) -> String {
    let message = match &e.kind {
        Kind::UnknownField(key, valid) => match parse::closest(key, valid) {
            Some(known) => format!("unknown key `{key}` (did you mean `{known}`?)"),
            None => format!("unknown key `{key}` (valid keys: {})", valid.join(", ")),
        },
        Kind::UnknownVariant(value, valid) => format!(
            "unknown value `{value}` (expected {}{})",
            valid.join(" or "),
            parse::did_you_mean(value, valid)
        ),
        kind => kind.to_string(),
    };
    let from_file = e
        .metadata
        .as_ref()
        .is_some_and(|m| m.name == Source::File.to_string());
    match file {
        Some(file) if from_file => file.error(&e.path, &message),
        _ => format!("key `{}`: {message}", e.path.join(".")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Command, FromArgMatches};

    /// The settings for `ARGS -- true` with the config file `text`, if any, as `run` resolves
    /// them.
    fn resolve_with(args: &[&str], file: Option<&str>) -> Result<Settings, String> {
        let command = Settings::augment_args(Command::new("run"));
        let matches = command
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap();
        let mut parsed = Settings::from_arg_matches(&matches).unwrap();
        parsed.command = vec!["true".into()];
        let file = file.map(|text| {
            ConfigFile::parse(Path::new("/etc/forkline.toml"), text.into()).map_err(CliError::Usage)
        });
        file.transpose()
            .and_then(|file| parsed.layered(&matches, file))
            .map_err(|e| e.to_string())
    }

    fn resolve(args: &[&str]) -> Settings {
        resolve_with(args, None).unwrap()
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
        assert_eq!(settings.source("settle-time"), Source::Flag);
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

    /// The defaults written in the flags are the library's.
    #[test]
    fn defaults_are_the_library_defaults() {
        let settings = resolve(&[]);
        let opts = options(&settings);
        let library = ClusterOptions::default();
        let layered = |key: &str| settings.source(key) != Source::Default;
        let unless_set = |key: &str, same: bool| assert!(same || layered(key), "{key}");
        unless_set("tcp-nodelay", opts.tcp_nodelay == library.tcp_nodelay);
        unless_set(
            "proxy-queue-timeout",
            opts.proxy_queue_timeout == library.proxy_queue_timeout,
        );
        unless_set(
            "handoff-timeout",
            opts.handoff_timeout == library.handoff_timeout,
        );
        unless_set(
            "settle-time",
            opts.settle_time == forkline::DEFAULT_SETTLE_TIME,
        );
        unless_set(
            "upgrade-timeout",
            opts.upgrade_timeout == library.upgrade_timeout,
        );
        unless_set(
            "min-uptime",
            opts.backoff.min_uptime == Backoff::default().min_uptime,
        );
        unless_set(
            "accept-coalesce",
            settings.accept_coalesce == forkline::DEFAULT_ACCEPT_COALESCE,
        );
        unless_set("socket-mode", opts.unix_mode.is_none());
    }

    #[test]
    fn the_file_fills_in_what_flags_leave() {
        let file = r#"
command = ["node", "server.js"]
workers = "max"
listen = "127.0.0.1:8080"
graceful-timeout = "10s"
min-uptime = 2
settle-time = "1.5s"
socket-mode = "0660"
socket-owner = "www-data:adm"
max-memory = "512M"
max-requests = 1000
user = 33
log-format = "json"
log-level = "forkline=debug"
readyz-all = true
cwd = "app"

[env]
NODE_ENV = "production"
THREADS = 4
"#;
        let settings =
            resolve_with(&["--graceful-timeout", "3s", "-e", "THREADS=8"], Some(file)).unwrap();
        assert_eq!(settings.workers, Workers::Max);
        assert_eq!(settings.listen.len(), 1);
        assert_eq!(settings.graceful_timeout, Duration::from_secs(3));
        assert_eq!(settings.source("graceful-timeout"), Source::Flag);
        assert_eq!(settings.min_uptime, Duration::from_secs(2));
        assert_eq!(settings.source("min-uptime"), Source::File);
        assert_eq!(settings.settle_time, Duration::from_millis(1500));
        assert_eq!(settings.socket_mode, Some(SocketMode(0o660)));
        assert_eq!(settings.max_memory, Some(ByteSize::mib(512)));
        assert_eq!(settings.max_requests, NonZeroU64::new(1000));
        assert_eq!(settings.user.as_deref(), Some("33"));
        assert_eq!(settings.log_format, LogFormat::Json);
        assert_eq!(settings.log_level, "forkline=debug");
        assert!(settings.readyz_all);
        let opts = options(&settings);
        assert!(opts.readyz_requires_all);
        assert_eq!(opts.log_format, forkline::LogFormat::Json);
        assert_eq!(settings.cwd, Some(PathBuf::from("/etc/app")));
        assert_eq!(settings.command, [OsString::from("true")]);
        assert_eq!(
            settings.env,
            [
                ("NODE_ENV".to_string(), "production".to_string()),
                ("THREADS".to_string(), "8".to_string())
            ]
        );
    }

    #[test]
    fn file_errors_name_the_key_and_line() {
        let error = |text: &str| resolve_with(&[], Some(text)).unwrap_err();
        let err = error("workers = 2\nbogus = 1\n");
        assert!(
            err.starts_with("/etc/forkline.toml:2: unknown key `bogus`"),
            "{err}"
        );
        let err = error("\ngracefull-timeout = 1\n");
        assert!(err.starts_with("/etc/forkline.toml:2: unknown key `gracefull-timeout` (did you mean `graceful-timeout`?)"), "{err}");
        let err = error("settle_time = \"2s\"\n");
        assert!(err.contains("did you mean `settle-time`?"), "{err}");
        let err = error("[env]\nA = \"x\"\nB = [1]\n");
        assert!(
            err.starts_with("/etc/forkline.toml:3: key `env.B`"),
            "{err}"
        );
        let err = error("workers = 2\n\nmode = \"fast\"\n");
        assert!(
            err.starts_with("/etc/forkline.toml:3: key `mode`:"),
            "{err}"
        );
        let err = error("workers = true\n");
        assert!(err.contains(":1: key `workers`"), "{err}");
        let err = error("workers = 0\n");
        assert!(err.contains("at least 1"), "{err}");
        let err = error("workers = 2\nsocket-mode = 660\n");
        assert!(
            err.contains(":2: key `socket-mode`") && err.contains("\"0660\""),
            "{err}"
        );
        let err = error("log-format = \"jsno\"\n");
        assert!(
            err.contains(":1: key `log-format`") && err.contains("did you mean `json`?"),
            "{err}"
        );
        let err = error("log-level = \"forkline=loud\"\n");
        assert!(err.contains(":1: key `log-level`"), "{err}");
        let err = error("listen = [\"web=127.0.0.1:80\", \"a:b=127.0.0.1:81\"]\n");
        assert!(
            err.contains(":1: key `listen`") && err.contains("a:b="),
            "{err}"
        );
        let err = error("command = []\n");
        assert!(
            err.contains(":1: key `command`: the command is empty"),
            "{err}"
        );
        let err = error("name = \"unterminated\nworkers = 1\n");
        assert!(err.starts_with("/etc/forkline.toml:1: key `name`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
