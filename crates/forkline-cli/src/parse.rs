//! Parsing of setting values as people write them — `30s`, `512M`, `127.0.0.1:8080`,
//! `unix:/run/app.sock`, `max` — and their canonical spelling back. The same functions serve
//! the flags, the environment variables and the config file, so a value means the same thing
//! wherever it is written, and every error says what was expected.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use forkline::{Balance, Mode, Readiness, RestartPolicy, SocketKind};

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

/// Parses a duration: `500ms`, `30s`, `5m`, `1h`, `1m30s`, `1.5s`; a bare number is seconds.
pub fn duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    let bad = || {
        format!(
            "`{s}` is not a duration (expected a number with a unit, like 250us, 500ms, 30s, 5m or 1h)"
        )
    };
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(secs) = text.parse::<f64>() {
        return seconds(secs).ok_or_else(bad);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if number_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale = match unit {
            "us" | "µs" => 0.000_001,
            "ms" => 0.001,
            "s" | "sec" | "secs" => 1.0,
            "m" | "min" | "mins" => 60.0,
            "h" | "hr" | "hrs" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad()),
        };
        total += seconds(value * scale).ok_or_else(bad)?;
    }
    Ok(total)
}

fn seconds(secs: f64) -> Option<Duration> {
    Duration::try_from_secs_f64(secs).ok()
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
    if ms == 0 {
        "0s".into()
    } else if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Parses a size in bytes: `1048576`, `64K`, `512M`, `1.5G`, `2T` (binary multiples; `B`, `iB`
/// and lower case accepted: `512MiB`, `512mb`).
pub fn size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let bad =
        || format!("`{s}` is not a size (expected bytes or a number with K, M, G or T, like 512M)");
    let upper = text.to_ascii_uppercase();
    let body = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (number, scale) = match body.chars().last() {
        Some('K') => (&body[..body.len() - 1], 1u64 << 10),
        Some('M') => (&body[..body.len() - 1], 1 << 20),
        Some('G') => (&body[..body.len() - 1], 1 << 30),
        Some('T') => (&body[..body.len() - 1], 1 << 40),
        Some(c) if c.is_ascii_digit() => (body, 1),
        _ => return Err(bad()),
    };
    let number = number.trim();
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(scale).ok_or_else(bad);
    }
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = value * scale as f64;
    if !(0.0..=u64::MAX as f64).contains(&bytes) || !bytes.is_finite() {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// The shortest exact spelling of a byte count: `512M`, `1G`, `1000`.
pub fn format_size(bytes: u64) -> String {
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

/// Parses `--socket-mode`: permission bits in octal, `660`, `0660` or `0o660`.
pub fn socket_mode(s: &str) -> Result<u32, String> {
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
    Ok(mode)
}

/// The canonical spelling of a socket mode: four octal digits, `0660`.
pub fn format_socket_mode(mode: u32) -> String {
    format!("{mode:04o}")
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

/// Parses `--mode`.
pub fn mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s.trim()).ok_or_else(|| {
        format!("unknown mode `{s}` (expected shared, reuseport, proxy or round-robin)")
    })
}

/// Parses `--balance`.
pub fn balance(s: &str) -> Result<Balance, String> {
    Balance::parse(s.trim()).ok_or_else(|| {
        format!("unknown balancing strategy `{s}` (expected round-robin, least-conn or ip-hash)")
    })
}

/// Parses `--restart`.
pub fn restart(s: &str) -> Result<RestartPolicy, String> {
    match s.trim() {
        "always" => Ok(RestartPolicy::Always),
        "on-failure" => Ok(RestartPolicy::OnFailure),
        "never" => Ok(RestartPolicy::Never),
        _ => Err(format!(
            "unknown restart policy `{s}` (expected always, on-failure or never)"
        )),
    }
}

/// The canonical name of a restart policy.
pub fn restart_name(policy: RestartPolicy) -> &'static str {
    match policy {
        RestartPolicy::Always => "always",
        RestartPolicy::OnFailure => "on-failure",
        RestartPolicy::Never => "never",
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
                "unknown readiness `{s}` (expected notify, listen, online, delay:DURATION or none)"
            )),
        },
    }
}

/// The canonical spelling of a readiness setting.
pub fn ready_name(readiness: Readiness) -> String {
    match readiness {
        Readiness::Notify => "notify".into(),
        Readiness::Listen => "listen".into(),
        Readiness::Online => "online".into(),
        Readiness::None => "none".into(),
        Readiness::Delay(d) => format!("delay:{}", format_duration(d)),
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
        assert_eq!(socket_mode("660"), Ok(0o660));
        assert_eq!(socket_mode("0660"), Ok(0o660));
        assert_eq!(socket_mode("0o600"), Ok(0o600));
        assert_eq!(socket_mode("777"), Ok(0o777));
        for bad in ["", "rw", "680", "0x660", "-660", "01777", "12345", "0o"] {
            assert!(socket_mode(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(format_socket_mode(0o660), "0660");
        assert_eq!(format_socket_mode(0o7), "0007");
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
        for bad in ["", "s", "10x", "-1s", "1..5s", "ms"] {
            assert!(duration(bad).is_err(), "{bad} should be rejected");
        }
        for d in ["30s", "500ms", "5m", "1h", "0s", "1500ms"] {
            assert_eq!(format_duration(duration(d).unwrap()), d);
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(size("512M"), Ok(512 << 20));
        assert_eq!(size("1G"), Ok(1 << 30));
        assert_eq!(size("1.5G"), Ok(3 << 29));
        assert_eq!(size("64k"), Ok(64 << 10));
        assert_eq!(size("512MiB"), Ok(512 << 20));
        assert_eq!(size("512mb"), Ok(512 << 20));
        assert_eq!(size("1000"), Ok(1000));
        for bad in ["", "M", "12Q", "-1M", "1.2.3G"] {
            assert!(size(bad).is_err(), "{bad} should be rejected");
        }
        assert_eq!(format_size(512 << 20), "512M");
        assert_eq!(format_size(1000), "1000");
    }

    #[test]
    fn enums() {
        assert_eq!(mode("proxy"), Ok(Mode::Proxy));
        assert!(mode("fast").unwrap_err().contains("shared, reuseport"));
        assert_eq!(balance("ip-hash"), Ok(Balance::IpHash));
        assert_eq!(restart("on-failure"), Ok(RestartPolicy::OnFailure));
        assert_eq!(
            ready("delay:2s"),
            Ok(Readiness::Delay(Duration::from_secs(2)))
        );
        assert_eq!(ready_name(ready("delay:500ms").unwrap()), "delay:500ms");
        assert!(ready("soon").is_err());
        assert_eq!(env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(env_pair("novalue").is_err());
        assert!(env_pair("=x").is_err());
    }
}
