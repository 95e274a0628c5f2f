//! `--listen` addresses as people write them — `[NAME=]ADDR`, where ADDR is `HOST:PORT`,
//! `[IPv6]:PORT`, `PORT`, `udp://HOST:PORT` or `unix:/path` — checked and put in canonical form,
//! with the name workers see in `LISTEN_FDNAMES` checked as systemd checks it.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use forkline::SocketKind;

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
const MAX_UNIX_PATH: usize = 107;

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
