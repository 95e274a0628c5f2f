//! Parsing of setting values as people write them — `30s`, `512M`, `127.0.0.1:8080`,
//! `unix:/run/app.sock`, `max` — and their canonical spelling back. The same functions serve
//! the flags (as clap value parsers), the environment variables and the config file (through
//! serde, see [`Text`]), so a value means the same thing wherever it is written, and every
//! error says what was expected.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::marker::PhantomData;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytesize::ByteSize;
use forkline::{Balance, Mode, Readiness, RestartPolicy, SocketKind};
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

/// `--workers`: a count, or `max` for one per core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    /// This many workers (at least 1).
    Count(usize),
    /// One worker per available core.
    Max,
}

impl Workers {
    /// The number of workers this stands for on this machine.
    pub fn resolve(self) -> usize {
        match self {
            Workers::Count(n) => n,
            Workers::Max => cores(),
        }
    }
}

/// `4` or `"max"`, as the config file has it.
impl Serialize for Workers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match *self {
            Workers::Count(n) => serializer.serialize_u64(n as u64),
            Workers::Max => serializer.serialize_str("max"),
        }
    }
}

impl<'de> Deserialize<'de> for Workers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text::deserialize(deserializer)
    }
}

/// Available cores (at least 1).
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Parses `N` (at least 1) or `max`.
pub fn workers(s: &str) -> Result<Workers, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("max") {
        return Ok(Workers::Max);
    }
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(Workers::Count(n)),
        Err(_) => Err(format!(
            "`{s}` is not a number of workers (expected N or `max`)"
        )),
    }
}

/// One `--listen` address, with the name workers see for it in `LISTEN_FDNAMES`, if given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenAddr {
    /// TCP, UDP or Unix stream.
    pub kind: SocketKind,
    /// `HOST:PORT` (IP literals in canonical form, IPv6 in brackets) or the socket path.
    pub address: String,
    /// The socket's name in `LISTEN_FDNAMES` (`NAME=ADDR`); `None`: named by its address.
    pub name: Option<String>,
}

impl ListenAddr {
    /// An address with no name.
    pub fn unnamed(kind: SocketKind, address: impl Into<String>) -> ListenAddr {
        ListenAddr {
            kind,
            address: address.into(),
            name: None,
        }
    }
}

/// Longest name systemd accepts in `LISTEN_FDNAMES` (`FDNAME_MAX`).
const MAX_FD_NAME: usize = 255;

/// `[NAME=]ADDR` as written: the name (if any), then the address.
impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(name) = &self.name {
            write!(f, "{name}=")?;
        }
        match self.kind {
            SocketKind::Tcp => write!(f, "{}", self.address),
            SocketKind::Udp => write!(f, "udp://{}", self.address),
            SocketKind::Unix => write!(f, "unix:{}", self.address),
        }
    }
}

/// Parses `[NAME=]ADDR`, where ADDR is `HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (all
/// interfaces), `tcp://HOST:PORT`, `udp://HOST:PORT` or `unix:/path`.
///
/// The name is the part before the first `=` when that part holds no `:` and no `/`. No valid
/// address reads differently under that rule: an address holds `=` only inside a `unix:` path,
/// and there a `:` comes first (`unix:/run/a=b.sock` is an address, `web=unix:/run/a=b.sock`
/// a name and an address). A name must be one systemd accepts (see [`fd_name`]).
pub fn listen_addr(s: &str) -> Result<ListenAddr, String> {
    let s = s.trim();
    match s.split_once('=') {
        Some((name, address)) if !name.contains([':', '/']) => {
            fd_name(name).map_err(|why| format!("`{s}`: {why}"))?;
            let mut parsed = address_only(address.trim())?;
            parsed.name = Some(name.to_string());
            Ok(parsed)
        }
        Some(_) => address_only(s).map_err(|why| {
            format!("{why}; a NAME before `=` may not contain `:` or `/` (NAME=ADDR)")
        }),
        None => address_only(s),
    }
}

/// Checks a name for `LISTEN_FDNAMES` as systemd does (`fdname_is_valid`), and refuses the
/// empty name too: printable ASCII (space included), no `:` (the list's separator), at most
/// 255 bytes. libsystemd's `sd_listen_fds_with_names` rejects the whole list otherwise.
pub fn fd_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name before `=` is empty (NAME=ADDR)".into());
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(' '..='~').contains(&c) || c == ':')
    {
        return Err(format!(
            "the name `{}` contains {c:?}: a socket name is printable ASCII without `:`",
            name.escape_debug()
        ));
    }
    if name.len() > MAX_FD_NAME {
        return Err(format!(
            "the name is {} bytes long: socket names are limited to {MAX_FD_NAME} bytes",
            name.len()
        ));
    }
    Ok(())
}

/// Parses an address without a name.
fn address_only(s: &str) -> Result<ListenAddr, String> {
    let expected = "expected HOST:PORT, [IPv6]:PORT, unix:/path or udp://HOST:PORT";
    if s.is_empty() {
        return Err(format!("empty address ({expected})"));
    }
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err(format!("`{s}`: the unix socket path is empty"));
        }
        if path.len() > MAX_UNIX_PATH {
            return Err(format!(
                "`{s}`: unix socket paths are limited to {MAX_UNIX_PATH} bytes"
            ));
        }
        if path.contains('\0') {
            return Err(format!("`{s}`: the unix socket path contains a NUL byte"));
        }
        return Ok(ListenAddr::unnamed(SocketKind::Unix, path));
    }
    let (kind, rest) = if let Some(rest) = s.strip_prefix("udp://") {
        (SocketKind::Udp, rest)
    } else if let Some(rest) = s.strip_prefix("tcp://") {
        (SocketKind::Tcp, rest)
    } else if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!("`{s}`: unknown scheme `{scheme}://` ({expected})"));
    } else {
        (SocketKind::Tcp, s)
    };
    let address = host_port(rest).map_err(|why| format!("`{s}`: {why} ({expected})"))?;
    Ok(ListenAddr::unnamed(kind, address))
}

/// Validates and normalizes `HOST:PORT`.
fn host_port(s: &str) -> Result<String, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(format!("0.0.0.0:{port}"));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, after) = rest
            .split_once(']')
            .ok_or("missing `]` after the IPv6 address")?;
        let ip: Ipv6Addr = ip
            .parse()
            .map_err(|_| format!("`{ip}` is not an IPv6 address"))?;
        let port = after
            .strip_prefix(':')
            .ok_or("missing `:PORT` after the IPv6 address")?;
        let port = port_number(port)?;
        return Ok(SocketAddr::new(IpAddr::V6(ip), port).to_string());
    }
    let (host, port) = s.rsplit_once(':').ok_or("missing `:PORT`")?;
    let port = port_number(port)?;
    if host.is_empty() {
        return Ok(format!("0.0.0.0:{port}"));
    }
    if host.contains(':') {
        return Err("IPv6 addresses are written in brackets, like [::1]:8080".into());
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port).to_string());
    }
    let valid_name = host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    if !valid_name {
        return Err(format!("`{host}` is not a valid host name or IP address"));
    }
    Ok(format!("{host}:{port}"))
}

fn port_number(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .map_err(|_| format!("`{s}` is not a port number (0-65535)"))
}

/// Parses a duration: `500ms`, `30s`, `5m`, `1h`, `1m30s`, `1.5s` (humantime's units); a bare
/// number is seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let parsed = match text.parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs).ok(),
        Err(_) => humantime::parse_duration(text).ok(),
    };
    parsed.ok_or_else(|| {
        format!(
            "`{s}` is not a duration (expected a number with a unit, like 250us, 500ms, 30s, 5m or 1h)"
        )
    })
}

/// The shortest exact spelling of `d` that [`duration`] reads back: `30s`, `500ms`, `5m`,
/// `250us`.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_nanos() % 1_000 != 0 {
        return format!("{}s", d.as_secs_f64());
    }
    if d.subsec_nanos() % 1_000_000 != 0 {
        return format!("{}us", d.as_micros());
    }
    match ms {
        0 => "0s".into(),
        _ if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        _ if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        _ if ms % 1000 == 0 => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// Parses a size: bytes, or a number with `K`, `M`, `G` or `T` — binary multiples, as in `ps`,
/// `top` and systemd's `MemoryMax=`, whether written `512M`, `512MB`, `512mb` or `512MiB`.
pub fn size(s: &str) -> Result<ByteSize, String> {
    let text = s.trim();
    let (number, unit) = text.split_at(text.find(char::is_alphabetic).unwrap_or(text.len()));
    // bytesize reads `M` and `MB` as 10^6: spell every unit the binary way, `MiB`, for it.
    let unit = unit
        .trim_end_matches(['b', 'B'])
        .trim_end_matches(['i', 'I']);
    let binary = if unit.is_empty() {
        String::new()
    } else {
        format!("{unit}iB")
    };
    format!("{number}{binary}")
        .parse::<ByteSize>()
        .map_err(|_| {
            format!("`{s}` is not a size (expected bytes or a number with K, M, G or T, like 512M)")
        })
}

/// The shortest exact spelling of a size: `512M`, `1G`, `1000`.
pub fn format_size(size: ByteSize) -> String {
    let bytes = size.as_u64();
    for (suffix, scale) in [
        ("T", 1u64 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ] {
        if bytes >= scale && bytes % scale == 0 {
            return format!("{}{suffix}", bytes / scale);
        }
    }
    bytes.to_string()
}

/// Parses `--env KEY=VALUE`.
pub fn env_pair(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))?;
    env_key(key)?;
    Ok((key.to_string(), value.to_string()))
}

/// Checks an environment variable name.
pub fn env_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(format!("`{key}` is not a valid environment variable name"));
    }
    Ok(())
}

/// `--socket-mode`: the permission bits of the Unix socket files forkline creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

/// Parses `--socket-mode`: permission bits in octal, `660`, `0660` or `0o660`.
pub fn socket_mode(s: &str) -> Result<SocketMode, String> {
    let text = s.trim();
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let bad = || {
        format!("`{s}` is not a file mode (expected permission bits in octal, like 660 or 0660)")
    };
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b))
    {
        return Err(bad());
    }
    let mode = u32::from_str_radix(digits, 8).map_err(|_| bad())?;
    if mode > 0o777 {
        return Err(format!(
            "`{s}`: only permission bits (at most 0777) can be set on a socket file"
        ));
    }
    Ok(SocketMode(mode))
}

/// `--socket-owner USER[:GROUP]`, as written: names or numbers, looked up by `run`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketOwner {
    /// A user name or uid.
    pub user: String,
    /// A group name or gid; `None`: the user's primary group.
    pub group: Option<String>,
}

impl fmt::Display for SocketOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.group {
            Some(group) => write!(f, "{}:{group}", self.user),
            None => write!(f, "{}", self.user),
        }
    }
}

/// Parses `USER[:GROUP]` (names or numbers; neither part empty).
pub fn socket_owner(s: &str) -> Result<SocketOwner, String> {
    let text = s.trim();
    let (user, group) = match text.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (text, None),
    };
    let valid = |part: &str| !part.is_empty() && !part.contains([':', '\0']);
    if !valid(user) || !group.is_none_or(valid) {
        return Err(format!(
            "`{s}` is not an owner (expected USER or USER:GROUP, names or numbers)"
        ));
    }
    Ok(SocketOwner {
        user: user.to_string(),
        group: group.map(str::to_string),
    })
}

/// The choice closest to `value`, if one is close enough to be a likely typo.
pub fn closest<'a>(value: &str, choices: &[&'a str]) -> Option<&'a str> {
    choices
        .iter()
        .map(|choice| (strsim::jaro_winkler(value, choice), *choice))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, choice)| choice)
}

/// `; did you mean `CHOICE`?` when `value` is close to one of `choices`, else nothing.
pub fn did_you_mean(value: &str, choices: &[&str]) -> String {
    closest(value, choices)
        .map(|choice| format!("; did you mean `{choice}`?"))
        .unwrap_or_default()
}

/// Parses `--mode`.
pub fn mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s.trim()).ok_or_else(|| {
        let choices = ["shared", "reuseport", "steer", "proxy", "round-robin"];
        format!(
            "unknown mode `{s}` (expected shared, reuseport, steer, proxy or round-robin{})",
            did_you_mean(s, &choices)
        )
    })
}

/// Parses `--balance`.
pub fn balance(s: &str) -> Result<Balance, String> {
    Balance::parse(s.trim()).ok_or_else(|| {
        let choices = ["round-robin", "least-conn", "ip-hash"];
        format!(
            "unknown balancing strategy `{s}` (expected round-robin, least-conn or ip-hash{})",
            did_you_mean(s, &choices)
        )
    })
}

/// Parses `--restart`.
pub fn restart(s: &str) -> Result<RestartPolicy, String> {
    match s.trim() {
        "always" => Ok(RestartPolicy::Always),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "never" => Ok(RestartPolicy::Never),
        _ => Err(format!(
            "unknown restart policy `{s}` (expected always, on-failure or never{})",
            did_you_mean(s, &["always", "on-failure", "never"])
        )),
    }
}

/// Parses `--ready`: `notify`, `listen`, `online`, `delay:DURATION` or `none`.
pub fn ready(s: &str) -> Result<Readiness, String> {
    let s = s.trim();
    match s {
        "notify" => Ok(Readiness::Notify),
        "listen" => Ok(Readiness::Listen),
        "online" => Ok(Readiness::Online),
        "none" => Ok(Readiness::None),
        _ => match s.strip_prefix("delay:") {
            Some(d) => duration(d).map(Readiness::Delay),
            None => Err(format!(
                "unknown readiness `{s}` (expected notify, listen, online, delay:DURATION or \
                 none{})",
                did_you_mean(s, &["notify", "listen", "online", "none"])
            )),
        },
    }
}

/// Parses `--log-level`: a tracing `EnvFilter` directive, such as `debug` or `forkline=debug`.
pub fn log_level(s: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::builder()
        .parse(s)
        .map(|_| s.to_string())
        .map_err(|e| {
            format!("`{s}` is not a log filter ({e}; expected a level like debug, or target=level)")
        })
}

/// `#[serde(deserialize_with = "log_filter")]`: a `log-level`, checked as [`log_level`] does.
pub fn log_filter<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    log_level(&String::deserialize(deserializer)?).map_err(de::Error::custom)
}

/// A setting value as people write it: the same parser reads it from a flag, an environment
/// variable or the config file, and [`Text::text`] spells it back for `check-config`. Settings
/// of library and std types are (de)serialized through it with `#[serde(with = "text")]`.
pub trait Text: Sized {
    /// What a value looks like, for the "expected ..." of a type error.
    const EXPECTED: &'static str;
    /// Parses a value as written.
    fn parse(s: &str) -> Result<Self, String>;
    /// The canonical spelling, which [`Text::parse`] reads back.
    fn text(&self) -> String;
    /// Parses a number or boolean that the config file gives unquoted (`workers = 4`,
    /// `min-uptime = 2`): by default, as its text.
    fn parse_unquoted(s: &str) -> Result<Self, String> {
        Self::parse(s)
    }
}

impl Text for Duration {
    const EXPECTED: &'static str = "a duration like \"30s\"";
    fn parse(s: &str) -> Result<Self, String> {
        duration(s)
    }
    fn text(&self) -> String {
        format_duration(*self)
    }
}

impl Text for ByteSize {
    const EXPECTED: &'static str = "a size like \"512M\"";
    fn parse(s: &str) -> Result<Self, String> {
        size(s)
    }
    fn text(&self) -> String {
        format_size(*self)
    }
}

impl Text for Workers {
    const EXPECTED: &'static str = "a number or \"max\"";
    fn parse(s: &str) -> Result<Self, String> {
        workers(s)
    }
    fn text(&self) -> String {
        match self {
            Workers::Count(n) => n.to_string(),
            Workers::Max => "max".into(),
        }
    }
}

impl Text for ListenAddr {
    const EXPECTED: &'static str = "an address like \"127.0.0.1:8080\"";
    fn parse(s: &str) -> Result<Self, String> {
        listen_addr(s)
    }
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Text for SocketMode {
    const EXPECTED: &'static str = "an octal mode in quotes, like \"0660\"";
    fn parse(s: &str) -> Result<Self, String> {
        socket_mode(s)
    }
    fn text(&self) -> String {
        format!("{:04o}", self.0)
    }
    /// TOML reads `660` as decimal and `0o660` as the number 432: a mode must be quoted.
    fn parse_unquoted(s: &str) -> Result<Self, String> {
        Err(format!(
            "expected an octal mode in quotes, like \"0660\", found {s}"
        ))
    }
}

impl Text for SocketOwner {
    const EXPECTED: &'static str = "an owner like \"www-data\" or \"www-data:adm\"";
    fn parse(s: &str) -> Result<Self, String> {
        socket_owner(s)
    }
    fn text(&self) -> String {
        self.to_string()
    }
}

impl Text for Mode {
    const EXPECTED: &'static str = "a mode: shared, reuseport, steer, proxy or round-robin";
    fn parse(s: &str) -> Result<Self, String> {
        mode(s)
    }
    fn text(&self) -> String {
        self.name().into()
    }
}

impl Text for Balance {
    const EXPECTED: &'static str = "a strategy: round-robin, least-conn or ip-hash";
    fn parse(s: &str) -> Result<Self, String> {
        balance(s)
    }
    fn text(&self) -> String {
        self.name().into()
    }
}

impl Text for RestartPolicy {
    const EXPECTED: &'static str = "a policy: always, on-failure or never";
    fn parse(s: &str) -> Result<Self, String> {
        restart(s)
    }
    fn text(&self) -> String {
        match self {
            RestartPolicy::Always => "always",
            RestartPolicy::OnFailure => "on-failure",
            RestartPolicy::Never => "never",
        }
        .into()
    }
}

impl Text for Readiness {
    const EXPECTED: &'static str = "notify, listen, online, delay:DURATION or none";
    fn parse(s: &str) -> Result<Self, String> {
        ready(s)
    }
    fn text(&self) -> String {
        match self {
            Readiness::Notify => "notify".into(),
            Readiness::Listen => "listen".into(),
            Readiness::Online => "online".into(),
            Readiness::None => "none".into(),
            Readiness::Delay(d) => format!("delay:{}", format_duration(*d)),
        }
    }
}

/// Names and ids (`user = 33`) and `[env]` values (`THREADS = 4`) are text, numbers included.
impl Text for String {
    const EXPECTED: &'static str = "a string";
    fn parse(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
    fn text(&self) -> String {
        self.clone()
    }
}

/// Reads a [`Text`] value from a string, or from a number or boolean through
/// [`Text::parse_unquoted`].
struct TextVisitor<T>(PhantomData<T>);

impl<T: Text> Visitor<'_> for TextVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTED)
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        T::parse(s).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        T::parse_unquoted(&n.to_string()).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        T::parse_unquoted(&n.to_string()).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
        T::parse_unquoted(&n.to_string()).map_err(E::custom)
    }
    fn visit_bool<E: de::Error>(self, b: bool) -> Result<T, E> {
        T::parse_unquoted(&b.to_string()).map_err(E::custom)
    }
}

/// `#[serde(with = "text")]`: a [`Text`] value as its text.
pub mod text {
    use super::*;

    /// Writes the value's text.
    pub fn serialize<T: Text, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&value.text())
    }

    /// Parses the value.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        deserializer.deserialize_any(TextVisitor(PhantomData))
    }
}

/// `#[serde(default, with = "opt_text")]`: an optional [`Text`] value; `None` is left out.
pub mod opt_text {
    use super::*;

    /// Writes the value's text, or nothing.
    pub fn serialize<T: Text, S: Serializer>(
        value: &Option<T>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(value) => serializer.serialize_str(&value.text()),
            None => serializer.serialize_none(),
        }
    }

    /// Parses the value.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<T>, D::Error> {
        text::deserialize(deserializer).map(Some)
    }
}

/// A [`Text`] value where serde wants a `Deserialize` type: an array's items, a table's values.
pub struct Parsed<T>(pub T);

impl<'de, T: Text> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        text::deserialize(deserializer).map(Parsed)
    }
}

/// `#[serde(with = "text_list")]`: a list of [`Text`] values, which the config file may also
/// give as one string (`listen = "127.0.0.1:8080"`).
pub mod text_list {
    use super::*;

    /// Writes an array of texts.
    pub fn serialize<T: Text, S: Serializer>(
        values: &[T],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(values.iter().map(Text::text))
    }

    /// Parses one value or an array of them.
    pub fn deserialize<'de, T: Text, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<T>, D::Error> {
        struct List<T>(PhantomData<T>);
        impl<'de, T: Text> Visitor<'de> for List<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}, or an array of them", T::EXPECTED)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Vec<T>, E> {
                T::parse(s).map(|value| vec![value]).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut items: A) -> Result<Vec<T>, A::Error> {
                let mut values = Vec::new();
                while let Some(Parsed(value)) = items.next_element()? {
                    values.push(value);
                }
                Ok(values)
            }
        }
        deserializer.deserialize_any(List(PhantomData))
    }
}

/// `#[serde(with = "env_table")]`: `--env KEY=VALUE` pairs as the config file's `[env]`
/// table, whose values may be numbers or booleans too (`THREADS = 4`).
pub mod env_table {
    use super::*;

    /// Writes a table; of two pairs with the same key, the later wins.
    pub fn serialize<S: Serializer>(
        pairs: &[(String, String)],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let table: BTreeMap<&String, &String> = pairs.iter().map(|(k, v)| (k, v)).collect();
        serializer.collect_map(table)
    }

    /// Reads a table of names and values.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<(String, String)>, D::Error> {
        BTreeMap::<String, Parsed<String>>::deserialize(deserializer)?
            .into_iter()
            .map(|(key, Parsed(value))| {
                env_key(&key).map_err(de::Error::custom)?;
                Ok((key, value))
            })
            .collect()
    }
}

/// `#[serde(default, with = "command")]`: the worker command and its arguments, as an array
/// of strings; none is left out.
pub mod command {
    use super::*;

    /// Writes an array of strings (lossily, for words that are not UTF-8), or nothing.
    pub fn serialize<S: Serializer>(words: &[OsString], serializer: S) -> Result<S::Ok, S::Error> {
        if words.is_empty() {
            return serializer.serialize_none();
        }
        serializer.collect_seq(words.iter().map(|word| word.to_string_lossy()))
    }

    /// Reads a program and its arguments.
    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<OsString>, D::Error> {
        let words = Vec::<String>::deserialize(deserializer)?;
        if words.first().is_none_or(String::is_empty) {
            return Err(de::Error::custom(
                "the command is empty (expected an array like [\"node\", \"server.js\"])",
            ));
        }
        Ok(words.into_iter().map(OsString::from).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_values() {
        assert_eq!(workers("4"), Ok(Workers::Count(4)));
        assert_eq!(workers("max"), Ok(Workers::Max));
        assert!(workers("0").unwrap_err().contains("at least 1"));
        assert!(workers("lots").is_err());
    }

    #[test]
    fn addresses() {
        let tcp = |a: &str| listen_addr(a).map(|l| (l.kind, l.address));
        assert_eq!(
            tcp("127.0.0.1:8080"),
            Ok((SocketKind::Tcp, "127.0.0.1:8080".into()))
        );
        assert_eq!(tcp("[::1]:80"), Ok((SocketKind::Tcp, "[::1]:80".into())));
        assert_eq!(tcp(":80"), Ok((SocketKind::Tcp, "0.0.0.0:80".into())));
        assert_eq!(tcp("8080"), Ok((SocketKind::Tcp, "0.0.0.0:8080".into())));
        assert_eq!(
            tcp("localhost:3000"),
            Ok((SocketKind::Tcp, "localhost:3000".into()))
        );
        assert_eq!(
            tcp("udp://127.0.0.1:53"),
            Ok((SocketKind::Udp, "127.0.0.1:53".into()))
        );
        assert_eq!(
            tcp("unix:/run/app.sock"),
            Ok((SocketKind::Unix, "/run/app.sock".into()))
        );
        for bad in [
            "127.0.0.1",
            "127.0.0.1:99999",
            "::1:80",
            "[::1]80",
            "[zz]:80",
            "http://x:80",
            "unix:",
            "bad host:80",
            "",
        ] {
            assert!(listen_addr(bad).is_err(), "{bad} should be rejected");
        }
        let long = format!("unix:/{}", "x".repeat(200));
        assert!(listen_addr(&long).unwrap_err().contains("107 bytes"));
        assert_eq!(
            listen_addr("udp://[::1]:9").unwrap().to_string(),
            "udp://[::1]:9"
        );
    }

    #[test]
    fn named_addresses() {
        let named = |a: &str| listen_addr(a).map(|l| (l.name, l.kind, l.address));
        assert_eq!(
            named("web=0.0.0.0:8080"),
            Ok((Some("web".into()), SocketKind::Tcp, "0.0.0.0:8080".into()))
        );
        assert_eq!(
            named("admin=unix:/run/app.sock"),
            Ok((
                Some("admin".into()),
                SocketKind::Unix,
                "/run/app.sock".into()
            ))
        );
        assert_eq!(
            named("metrics=udp://127.0.0.1:8125"),
            Ok((
                Some("metrics".into()),
                SocketKind::Udp,
                "127.0.0.1:8125".into()
            ))
        );
        assert_eq!(
            named("web=8080"),
            Ok((Some("web".into()), SocketKind::Tcp, "0.0.0.0:8080".into()))
        );
        // `=` inside a unix path: the part before it holds `:`, so it is no name.
        assert_eq!(
            named("unix:/run/a=b.sock"),
            Ok((None, SocketKind::Unix, "/run/a=b.sock".into()))
        );
        assert_eq!(
            named("web=unix:/run/a=b.sock"),
            Ok((Some("web".into()), SocketKind::Unix, "/run/a=b.sock".into()))
        );
        // Whatever systemd accepts: printable ASCII, space included.
        assert_eq!(
            named("my web.v2=[::1]:80"),
            Ok((Some("my web.v2".into()), SocketKind::Tcp, "[::1]:80".into()))
        );
        let longest = format!("{}=127.0.0.1:80", "n".repeat(255));
        assert!(listen_addr(&longest).is_ok());
        // Display gives back what reads back.
        for written in [
            "web=127.0.0.1:80",
            "admin=unix:/run/a=b.sock",
            "127.0.0.1:80",
        ] {
            assert_eq!(listen_addr(written).unwrap().to_string(), written);
        }
        let too_long = format!("{}=127.0.0.1:80", "n".repeat(256));
        assert!(listen_addr(&too_long).unwrap_err().contains("255 bytes"));
        assert!(listen_addr("=127.0.0.1:80").unwrap_err().contains("empty"));
        assert!(listen_addr("caf\u{e9}=127.0.0.1:80")
            .unwrap_err()
            .contains("printable ASCII"));
        assert!(listen_addr("tab\there=127.0.0.1:80")
            .unwrap_err()
            .contains("printable ASCII"));
        assert!(listen_addr("a:b=127.0.0.1:80")
            .unwrap_err()
            .contains("may not contain `:` or `/`"));
        assert!(listen_addr("a/b=127.0.0.1:80").is_err());
        assert!(listen_addr("web=nowhere").unwrap_err().contains("nowhere"));
    }

    #[test]
    fn socket_modes_and_owners() {
        assert_eq!(socket_mode("660"), Ok(SocketMode(0o660)));
        assert_eq!(socket_mode("0660"), Ok(SocketMode(0o660)));
        assert_eq!(socket_mode("0o600"), Ok(SocketMode(0o600)));
        assert_eq!(socket_mode("777"), Ok(SocketMode(0o777)));
        for bad in ["", "rw", "680", "0x660", "-660", "01777", "12345", "0o"] {
            assert!(socket_mode(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(SocketMode(0o660).text(), "0660");
        assert_eq!(SocketMode(0o7).text(), "0007");
        assert_eq!(
            socket_owner("www-data"),
            Ok(SocketOwner {
                user: "www-data".into(),
                group: None
            })
        );
        assert_eq!(socket_owner("1000:33").unwrap().to_string(), "1000:33");
        for bad in ["", ":", "user:", ":group", "a:b:c"] {
            assert!(socket_owner(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(duration("1 min"), Ok(Duration::from_secs(60)));
        for bad in ["", "s", "10x", "-1s", "1..5s", "ms", "5 parsecs"] {
            assert!(duration(bad).is_err(), "{bad} should be rejected");
        }
        for d in ["30s", "500ms", "5m", "1h", "0s", "1500ms"] {
            assert_eq!(format_duration(duration(d).unwrap()), d);
        }
    }

    #[test]
    fn sizes() {
        let bytes = |s: &str| size(s).map(|size| size.as_u64());
        assert_eq!(bytes("512M"), Ok(512 << 20));
        assert_eq!(bytes("1G"), Ok(1 << 30));
        assert_eq!(bytes("1.5G"), Ok(3 << 29));
        assert_eq!(bytes("64k"), Ok(64 << 10));
        assert_eq!(bytes("512MiB"), Ok(512 << 20));
        assert_eq!(bytes("512mb"), Ok(512 << 20));
        assert_eq!(bytes("512 M"), Ok(512 << 20));
        assert_eq!(bytes("1000"), Ok(1000));
        assert_eq!(bytes("1000B"), Ok(1000));
        for bad in ["", "M", "12Q", "-1M", "1.2.3G", "1Gx"] {
            assert!(size(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(format_size(ByteSize::mib(512)), "512M");
        assert_eq!(format_size(ByteSize::b(1000)), "1000");
    }

    #[test]
    fn enums() {
        assert_eq!(mode("proxy"), Ok(Mode::Proxy));
        assert_eq!(mode("steer"), Ok(Mode::Steer));
        assert!(mode("steeer")
            .unwrap_err()
            .ends_with("; did you mean `steer`?)"));
        assert!(mode("fast").unwrap_err().contains("shared, reuseport"));
        assert!(mode("prxy")
            .unwrap_err()
            .ends_with("; did you mean `proxy`?)"));
        assert!(!mode("fast").unwrap_err().contains("did you mean"));
        assert_eq!(balance("ip-hash"), Ok(Balance::IpHash));
        assert_eq!(restart("on-failure"), Ok(RestartPolicy::OnFailure));
        assert_eq!(
            ready("delay:2s"),
            Ok(Readiness::Delay(Duration::from_secs(2)))
        );
        assert_eq!(ready("delay:500ms").unwrap().text(), "delay:500ms");
        assert!(log_level("forkline=debug,info").is_ok());
        assert!(log_level("forkline=loud").is_err());
        assert!(ready("soon").is_err());
        assert_eq!(env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(env_pair("novalue").is_err());
        assert!(env_pair("=x").is_err());
    }
}
