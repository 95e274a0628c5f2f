//! The config file (`forkline.toml`): the same settings as the flags, spelled like the long
//! flags (`graceful-timeout = "30s"`), plus `command` and an `[env]` table. Unknown keys are
//! rejected, and every error names the file, the line and the key.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::parse::{self, ListenAddr, SocketOwner, Workers};
use forkline::{Balance, Mode, Readiness, RestartPolicy};

/// The file as written: each value with its position, checked later by [`FileSettings::check`]
/// so errors can name the key and the line.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawFile {
    command: Option<Spanned<Value>>,
    workers: Option<Spanned<Value>>,
    listen: Option<Spanned<Value>>,
    tcp_nodelay: Option<Spanned<Value>>,
    socket_mode: Option<Spanned<Value>>,
    socket_owner: Option<Spanned<Value>>,
    mode: Option<Spanned<Value>>,
    balance: Option<Spanned<Value>>,
    proxy_queue_timeout: Option<Spanned<Value>>,
    handoff_timeout: Option<Spanned<Value>>,
    name: Option<Spanned<Value>>,
    control: Option<Spanned<Value>>,
    metrics: Option<Spanned<Value>>,
    env: Option<Spanned<BTreeMap<String, Spanned<Value>>>>,
    cwd: Option<Spanned<Value>>,
    user: Option<Spanned<Value>>,
    group: Option<Spanned<Value>>,
    graceful_timeout: Option<Spanned<Value>>,
    restart: Option<Spanned<Value>>,
    min_uptime: Option<Spanned<Value>>,
    max_restarts: Option<Spanned<Value>>,
    ready: Option<Spanned<Value>>,
    ready_timeout: Option<Spanned<Value>>,
    settle_time: Option<Spanned<Value>>,
    worker_timeout: Option<Spanned<Value>>,
    accept_coalesce: Option<Spanned<Value>>,
    max_requests: Option<Spanned<Value>>,
    max_requests_jitter: Option<Spanned<Value>>,
    max_memory: Option<Spanned<Value>>,
    log_prefix: Option<Spanned<Value>>,
}

/// The settings a config file gives, each already validated. `None` means "not in the file".
#[derive(Debug, Clone, Default)]
pub struct FileSettings {
    /// The worker command and its arguments.
    pub command: Option<Vec<String>>,
    /// Number of workers.
    pub workers: Option<Workers>,
    /// Listen addresses.
    pub listen: Option<Vec<ListenAddr>>,
    /// TCP_NODELAY on the TCP listeners forkline binds.
    pub tcp_nodelay: Option<bool>,
    /// Permissions of the Unix socket files forkline creates.
    pub socket_mode: Option<u32>,
    /// Owner of the Unix socket files forkline creates.
    pub socket_owner: Option<SocketOwner>,
    /// Distribution mode.
    pub mode: Option<Mode>,
    /// Balancing strategy.
    pub balance: Option<Balance>,
    /// Proxy mode: how long a client waits for a worker to be up.
    pub proxy_queue_timeout: Option<Duration>,
    /// Round-robin: how long handoffs may sit unread before they are taken back.
    pub handoff_timeout: Option<Duration>,
    /// Name used in log prefixes.
    pub name: Option<String>,
    /// The control socket's path (relative paths are relative to the file's directory).
    pub control: Option<PathBuf>,
    /// Where to serve metrics and probes (`HOST:PORT`).
    pub metrics: Option<String>,
    /// Extra environment for workers.
    pub env: Vec<(String, String)>,
    /// Working directory of workers (relative paths are relative to the file's directory).
    pub cwd: Option<PathBuf>,
    /// User to run workers as.
    pub user: Option<String>,
    /// Group to run workers as.
    pub group: Option<String>,
    /// Graceful stop timeout.
    pub graceful_timeout: Option<Duration>,
    /// Restart policy.
    pub restart: Option<RestartPolicy>,
    /// Uptime after which a worker counts as stable.
    pub min_uptime: Option<Duration>,
    /// Give up on a slot after this many young deaths in a row.
    pub max_restarts: Option<u32>,
    /// Readiness.
    pub ready: Option<Readiness>,
    /// Readiness timeout.
    pub ready_timeout: Option<Duration>,
    /// How long a ready replacement must stay alive before it takes over.
    pub settle_time: Option<Duration>,
    /// Watchdog timeout.
    pub worker_timeout: Option<Duration>,
    /// Round-robin accept coalescing window.
    pub accept_coalesce: Option<Duration>,
    /// Recycle after this many connections.
    pub max_requests: Option<u64>,
    /// Jitter added to `max-requests`.
    pub max_requests_jitter: Option<u64>,
    /// Recycle above this resident memory, in bytes.
    pub max_memory: Option<u64>,
    /// Prefix worker output lines.
    pub log_prefix: Option<bool>,
}

/// Reads and checks `path`. The error is one line: `PATH:LINE: key `KEY`: what is wrong`.
pub fn load(path: &Path) -> Result<FileSettings, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
    parse_str(&text, path)
}

/// Checks config text that came from `path`.
pub fn parse_str(text: &str, path: &Path) -> Result<FileSettings, String> {
    let located = Locator { text, path };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        let message = unknown_key_hint(&one_line(e.message()));
        match e.span() {
            Some(span) => located.error_at(span, None, &message),
            None => format!("{}: {message}", path.display()),
        }
    })?;
    FileSettings::check(raw, &located)
}

/// Turns byte offsets into `PATH:LINE` and finds the key a line sets.
struct Locator<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Locator<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The key assigned on the line holding `offset` (`key = ...`), if that line is one.
    fn key_at(&self, offset: usize) -> Option<&str> {
        let offset = offset.min(self.text.len());
        let start = self.text[..offset].rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[start..].lines().next().unwrap_or("");
        let (key, _) = line.split_once('=')?;
        let key = key.trim().trim_matches('"');
        let plain = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
        plain.then_some(key)
    }

    /// `PATH:LINE: key `KEY`: MESSAGE`, naming the key unless the message already does.
    fn error_at(&self, span: Range<usize>, key: Option<&str>, message: &str) -> String {
        let line = self.line_of(span.start);
        let key = key.or_else(|| self.key_at(span.start));
        match key {
            Some(key) if !message.contains(&format!("`{key}`")) => {
                format!("{}:{line}: key `{key}`: {message}", self.path.display())
            }
            _ => format!("{}:{line}: {message}", self.path.display()),
        }
    }
}

/// Rewords serde's "unknown field `x`, expected one of ..." as "unknown key `x`", suggesting
/// the closest valid key.
fn unknown_key_hint(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((key, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let nearest = valid
        .iter()
        .map(|v| (edit_distance(key, v), *v))
        .min()
        .filter(|(d, _)| *d <= 3);
    match nearest {
        Some((_, suggestion)) => format!("unknown key `{key}` (did you mean `{suggestion}`?)"),
        None => format!("unknown key `{key}` (valid keys: {})", valid.join(", ")),
    }
}

/// Levenshtein distance, for suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

/// Joins a multi-line message into one line.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks one optional value with `check`, turning its error into a located one.
fn field<T>(
    located: &Locator<'_>,
    key: &str,
    value: Option<Spanned<Value>>,
    check: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match value {
        None => Ok(None),
        Some(spanned) => check(spanned.get_ref())
            .map(Some)
            .map_err(|why| located.error_at(spanned.span(), Some(key), &why)),
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

fn string(value: &Value) -> Result<String, String> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, found {}", type_name(other))),
    }
}

fn string_list(value: &Value, example: &str) -> Result<Vec<String>, String> {
    let expected = || format!("expected an array of strings, like {example}");
    match value {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(expected()),
            })
            .collect(),
        _ => Err(expected()),
    }
}

/// A duration: a string like `"30s"`, or a number of seconds.
fn duration(value: &Value) -> Result<Duration, String> {
    match value {
        Value::String(s) => parse::duration(s),
        Value::Integer(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        Value::Float(f) => Duration::try_from_secs_f64(*f).map_err(|e| e.to_string()),
        other => Err(format!(
            "expected a duration like \"30s\", found {}",
            type_name(other)
        )),
    }
}

fn boolean(value: &Value) -> Result<bool, String> {
    match value {
        Value::Boolean(b) => Ok(*b),
        other => Err(format!(
            "expected true or false, found {}",
            type_name(other)
        )),
    }
}

fn count(value: &Value) -> Result<u64, String> {
    match value {
        Value::Integer(n) if *n >= 0 => Ok(*n as u64),
        Value::Integer(n) => Err(format!("{n} is negative")),
        other => Err(format!(
            "expected a whole number, found {}",
            type_name(other)
        )),
    }
}

impl FileSettings {
    fn check(raw: RawFile, located: &Locator<'_>) -> Result<FileSettings, String> {
        let base = located.path.parent().unwrap_or(Path::new("."));
        let command = field(located, "command", raw.command, |v| {
            let words = string_list(v, r#"["node", "server.js"]"#)?;
            if words.is_empty() || words[0].is_empty() {
                return Err("the command is empty".into());
            }
            Ok(words)
        })?;
        let workers = field(located, "workers", raw.workers, |v| match v {
            Value::Integer(n) => parse::workers(&n.to_string()),
            Value::String(s) => parse::workers(s),
            other => Err(format!(
                "expected a number or \"max\", found {}",
                type_name(other)
            )),
        })?;
        let listen = field(located, "listen", raw.listen, |v| {
            let list = match v {
                Value::String(s) => vec![s.clone()],
                _ => string_list(v, r#"["127.0.0.1:8080", "unix:/run/app.sock"]"#)?,
            };
            list.iter().map(|a| parse::listen_addr(a)).collect()
        })?;
        let mut env = Vec::new();
        for (key, value) in raw.env.map(Spanned::into_inner).unwrap_or_default() {
            let name = format!("env.{key}");
            let text = field(located, &name, Some(value), |v| {
                parse::env_key(&key)?;
                match v {
                    Value::String(s) => Ok(s.clone()),
                    Value::Integer(n) => Ok(n.to_string()),
                    Value::Float(f) => Ok(f.to_string()),
                    Value::Boolean(b) => Ok(b.to_string()),
                    other => Err(format!("expected a string, found {}", type_name(other))),
                }
            })?;
            env.extend(text.map(|text| (key, text)));
        }
        Ok(FileSettings {
            command,
            workers,
            listen,
            tcp_nodelay: field(located, "tcp-nodelay", raw.tcp_nodelay, boolean)?,
            // A string: TOML reads `660` as decimal and `0o660` as the same number as `432`.
            socket_mode: field(located, "socket-mode", raw.socket_mode, |v| match v {
                Value::String(s) => parse::socket_mode(s),
                other => Err(format!(
                    "expected an octal mode in quotes, like \"0660\", found {}",
                    type_name(other)
                )),
            })?,
            socket_owner: field(located, "socket-owner", raw.socket_owner, |v| match v {
                Value::Integer(n) => parse::socket_owner(&n.to_string()),
                other => parse::socket_owner(&string(other)?),
            })?,
            mode: field(located, "mode", raw.mode, |v| parse::mode(&string(v)?))?,
            balance: field(located, "balance", raw.balance, |v| {
                parse::balance(&string(v)?)
            })?,
            proxy_queue_timeout: field(
                located,
                "proxy-queue-timeout",
                raw.proxy_queue_timeout,
                duration,
            )?,
            handoff_timeout: field(located, "handoff-timeout", raw.handoff_timeout, duration)?,
            name: field(located, "name", raw.name, string)?,
            metrics: field(located, "metrics", raw.metrics, string)?,
            control: field(located, "control", raw.control, |v| {
                Ok(base.join(string(v)?))
            })?,
            env,
            cwd: field(located, "cwd", raw.cwd, |v| Ok(base.join(string(v)?)))?,
            user: field(located, "user", raw.user, |v| match v {
                Value::Integer(n) => Ok(n.to_string()),
                other => string(other),
            })?,
            group: field(located, "group", raw.group, |v| match v {
                Value::Integer(n) => Ok(n.to_string()),
                other => string(other),
            })?,
            graceful_timeout: field(located, "graceful-timeout", raw.graceful_timeout, duration)?,
            restart: field(located, "restart", raw.restart, |v| {
                parse::restart(&string(v)?)
            })?,
            min_uptime: field(located, "min-uptime", raw.min_uptime, duration)?,
            max_restarts: field(located, "max-restarts", raw.max_restarts, |v| {
                u32::try_from(count(v)?).map_err(|_| "too large".to_string())
            })?,
            ready: field(located, "ready", raw.ready, |v| parse::ready(&string(v)?))?,
            ready_timeout: field(located, "ready-timeout", raw.ready_timeout, duration)?,
            settle_time: field(located, "settle-time", raw.settle_time, duration)?,
            worker_timeout: field(located, "worker-timeout", raw.worker_timeout, duration)?,
            accept_coalesce: field(located, "accept-coalesce", raw.accept_coalesce, duration)?,
            max_requests: field(
                located,
                "max-requests",
                raw.max_requests,
                |v| match count(v)? {
                    0 => Err("must be at least 1".into()),
                    n => Ok(n),
                },
            )?,
            max_requests_jitter: field(
                located,
                "max-requests-jitter",
                raw.max_requests_jitter,
                count,
            )?,
            max_memory: field(located, "max-memory", raw.max_memory, |v| match v {
                Value::String(s) => parse::size(s),
                Value::Integer(n) if *n > 0 => Ok(*n as u64),
                other => Err(format!(
                    "expected a size like \"512M\", found {}",
                    type_name(other)
                )),
            })?,
            log_prefix: field(located, "log-prefix", raw.log_prefix, boolean)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileSettings, String> {
        parse_str(text, Path::new("/etc/forkline.toml"))
    }

    #[test]
    fn full_file() {
        let file = parse(
            r#"
command = ["node", "server.js"]
workers = "max"
listen = ["127.0.0.1:8080", "unix:/run/app.sock"]
mode = "shared"
graceful-timeout = "10s"
min-uptime = 2
settle-time = "1.5s"
tcp-nodelay = false
socket-mode = "0660"
socket-owner = "www-data:adm"
proxy-queue-timeout = "2s"
max-memory = "512M"
max-requests = 1000
log-prefix = false
cwd = "app"

[env]
NODE_ENV = "production"
THREADS = 4
"#,
        )
        .unwrap();
        assert_eq!(file.workers, Some(Workers::Max));
        assert_eq!(file.listen.unwrap().len(), 2);
        assert_eq!(file.graceful_timeout, Some(Duration::from_secs(10)));
        assert_eq!(file.min_uptime, Some(Duration::from_secs(2)));
        assert_eq!(file.settle_time, Some(Duration::from_millis(1500)));
        assert_eq!(file.tcp_nodelay, Some(false));
        assert_eq!(file.socket_mode, Some(0o660));
        assert_eq!(
            file.socket_owner.map(|o| o.to_string()),
            Some("www-data:adm".into())
        );
        assert_eq!(file.proxy_queue_timeout, Some(Duration::from_secs(2)));
        assert_eq!(file.max_memory, Some(512 << 20));
        assert_eq!(file.log_prefix, Some(false));
        assert_eq!(file.cwd, Some(PathBuf::from("/etc/app")));
        assert_eq!(
            file.env,
            vec![
                ("NODE_ENV".into(), "production".into()),
                ("THREADS".into(), "4".into())
            ]
        );
    }

    #[test]
    fn errors_name_the_key_and_line() {
        let err = parse("workers = 2\nbogus = 1\n").unwrap_err();
        assert!(
            err.starts_with("/etc/forkline.toml:2: unknown key `bogus`"),
            "{err}"
        );

        let err = parse("gracefull-timeout = 1\n").unwrap_err();
        assert!(err.contains("did you mean `graceful-timeout`?"), "{err}");

        let err = parse("[env]\nA = \"x\"\nB = [1]\n").unwrap_err();
        assert!(
            err.starts_with("/etc/forkline.toml:3: key `env.B`"),
            "{err}"
        );

        let err = parse("workers = 2\n\nmode = \"fast\"\n").unwrap_err();
        assert!(
            err.starts_with("/etc/forkline.toml:3: key `mode`:"),
            "{err}"
        );

        let err = parse("workers = true\n").unwrap_err();
        assert!(err.contains(":1: key `workers`"), "{err}");

        let err = parse("workers = 0\n").unwrap_err();
        assert!(err.contains("at least 1"), "{err}");

        let err = parse("name = \"x\"\ngraceful-timeout = \"soon\"\n").unwrap_err();
        assert!(err.contains(":2: key `graceful-timeout`"), "{err}");

        let err = parse("workers = 2\nsettle-time = \"a bit\"\n").unwrap_err();
        assert!(err.contains(":2: key `settle-time`"), "{err}");

        let err = parse("settle_time = \"2s\"\n").unwrap_err();
        assert!(err.contains("did you mean `settle-time`?"), "{err}");

        let err = parse("workers = 2\nsocket-mode = 660\n").unwrap_err();
        assert!(err.contains(":2: key `socket-mode`"), "{err}");
        assert!(err.contains("\"0660\""), "{err}");

        let err = parse("tcp-nodelay = \"maybe\"\n").unwrap_err();
        assert!(err.contains(":1: key `tcp-nodelay`"), "{err}");

        let err = parse("socket-owner = \"a:b:c\"\n").unwrap_err();
        assert!(err.contains(":1: key `socket-owner`"), "{err}");

        let err = parse("proxy-queue-timeout = \"soon\"\n").unwrap_err();
        assert!(err.contains(":1: key `proxy-queue-timeout`"), "{err}");

        let err = parse("listen = [\"web=127.0.0.1:80\", \"a:b=127.0.0.1:81\"]\n").unwrap_err();
        assert!(err.contains(":1: key `listen`"), "{err}");

        let err = parse("listen = [\"nowhere\"]\n").unwrap_err();
        assert!(err.contains("key `listen`"), "{err}");

        let err = parse("name = \"unterminated\nworkers = 1\n").unwrap_err();
        assert!(err.starts_with("/etc/forkline.toml:1:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
}
