//! The scalar setting values as people write them — `4` or `max` workers, `30s`, `512M`,
//! `KEY=VALUE`, an octal socket mode, `USER:GROUP`, the named choices (`--mode`, `--balance`,
//! `--restart`, `--ready`, `--log-level`) — and the canonical spelling of durations and sizes.
//! Every error says what was expected, with a "did you mean" for a likely typo.

use std::fmt;
use std::time::Duration;

use bytesize::ByteSize;
use forkline::{Balance, Mode, Readiness, RestartPolicy};

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
    s.trim().parse::<Mode>().map_err(|_| {
        let choices = ["shared", "reuseport", "steer", "proxy", "round-robin"];
        format!(
            "unknown mode `{s}` (expected shared, reuseport, steer, proxy or round-robin{})",
            did_you_mean(s, &choices)
        )
    })
}

/// Parses `--balance`.
pub fn balance(s: &str) -> Result<Balance, String> {
    s.trim().parse::<Balance>().map_err(|_| {
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
    fn socket_modes_and_owners() {
        assert_eq!(socket_mode("660"), Ok(SocketMode(0o660)));
        assert_eq!(socket_mode("0660"), Ok(SocketMode(0o660)));
        assert_eq!(socket_mode("0o600"), Ok(SocketMode(0o600)));
        assert_eq!(socket_mode("777"), Ok(SocketMode(0o777)));
        for bad in ["", "rw", "680", "0x660", "-660", "01777", "12345", "0o"] {
            assert!(socket_mode(bad).is_err(), "{bad} should be rejected");
        }
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
        assert!(log_level("forkline=debug,info").is_ok());
        assert!(log_level("forkline=loud").is_err());
        assert!(ready("soon").is_err());
        assert_eq!(env_pair("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(env_pair("novalue").is_err());
        assert!(env_pair("=x").is_err());
    }
}
