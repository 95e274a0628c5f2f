//! The client side of the control socket (`docs/CONTROL.md`): where a cluster's socket lives,
//! and one request/reply over it, for `status`, `ls`, `reload`, `scale`, `restart` and `stop`.
//!
//! A cluster named NAME serves `DIR/NAME.sock`, DIR being `$XDG_RUNTIME_DIR/forkline` when
//! XDG_RUNTIME_DIR is set, else `/run/forkline` for root, else `$TMPDIR/forkline-UID`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::error::CliError;

/// How long a quick request (status, scale, stop) may take before the cluster is called stuck.
pub const QUICK: Duration = Duration::from_secs(15);

/// The directory this user's clusters put their control sockets in.
pub fn default_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("forkline");
    }
    let uid = nix::unistd::Uid::effective();
    if uid.is_root() {
        PathBuf::from("/run/forkline")
    } else {
        std::env::temp_dir().join(format!("forkline-{uid}"))
    }
}

/// The control socket of the cluster named `name`, in [`default_dir`].
pub fn default_path(name: &str) -> PathBuf {
    default_dir().join(format!("{}.sock", name.replace('/', "_")))
}

/// A cluster to talk to.
#[derive(Debug, Clone)]
pub struct Target {
    /// What the user called it (the name, or the path given).
    pub name: String,
    /// Its control socket.
    pub path: PathBuf,
    /// True when found by name (an unknown one lists the live clusters).
    by_name: bool,
}

impl Target {
    /// The cluster named `name`, or the socket `control` (given with `--control`).
    pub fn new(name: Option<&str>, control: Option<&Path>) -> Result<Target, CliError> {
        match (control, name) {
            (Some(path), name) => Ok(Target {
                name: name
                    .map(str::to_string)
                    .unwrap_or_else(|| path.display().to_string()),
                path: path.to_path_buf(),
                by_name: false,
            }),
            (None, Some(name)) if !name.is_empty() => Ok(Target {
                name: name.to_string(),
                path: default_path(name),
                by_name: true,
            }),
            (None, _) => Err(CliError::Usage(
                "no cluster given: name it (see forkline ls) or give --control PATH".into(),
            )),
        }
    }

    /// Sends `request` (the version is added) and returns the reply when it says `ok`; a
    /// reply that does not is a runtime error with the reply's own words. `timeout` bounds the
    /// wait for the reply (`None`: a reload or restart, which takes as long as it takes).
    pub fn call(&self, request: Value, timeout: Option<Duration>) -> Result<Value, CliError> {
        let reply = self.send(request, timeout)?;
        if reply["ok"] == json!(true) {
            return Ok(reply);
        }
        let error = reply["error"].as_str().unwrap_or("the cluster refused");
        Err(CliError::Runtime(format!("{}: {error}", self.name)))
    }

    /// Sends `request` and returns the reply as it is (a permission-denied reply is an error).
    pub fn send(&self, mut request: Value, timeout: Option<Duration>) -> Result<Value, CliError> {
        request["v"] = json!(1);
        let stream = self.connect()?;
        let reply = exchange(stream, &request, timeout).map_err(|e| {
            CliError::Runtime(format!(
                "{}: control socket {}: {e}",
                self.name,
                self.path.display()
            ))
        })?;
        let refused = reply["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("permission denied"));
        if reply["ok"] != json!(true) && refused {
            return Err(self.permission_denied());
        }
        Ok(reply)
    }

    /// Connects, turning "nothing there" into an error that lists the live clusters.
    pub fn connect(&self) -> Result<UnixStream, CliError> {
        match UnixStream::connect(&self.path) {
            Ok(stream) => Ok(stream),
            Err(e) if e.kind() == ErrorKind::PermissionDenied => Err(self.permission_denied()),
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                Err(self.unknown())
            }
            Err(e) => Err(CliError::Runtime(format!(
                "{}: cannot connect to {}: {e}",
                self.name,
                self.path.display()
            ))),
        }
    }

    /// True while something answers on the socket.
    pub fn answers(&self) -> bool {
        UnixStream::connect(&self.path).is_ok()
    }

    fn permission_denied(&self) -> CliError {
        CliError::Runtime(format!(
            "{}: permission denied on {}: the cluster belongs to another user (run as that \
             user or root)",
            self.name,
            self.path.display()
        ))
    }

    fn unknown(&self) -> CliError {
        if !self.by_name {
            return CliError::Runtime(format!(
                "no cluster serves {} (is it running?)",
                self.path.display()
            ));
        }
        let dir = default_dir();
        let live: Vec<String> = live_clusters(&dir).into_iter().map(|c| c.name).collect();
        let running = if live.is_empty() {
            format!("none is running in {}", dir.display())
        } else {
            format!("running: {}", live.join(", "))
        };
        CliError::Runtime(format!(
            "no cluster named `{}` is running ({running})",
            self.name
        ))
    }
}

/// Writes one request line and reads one reply line.
fn exchange(
    mut stream: UnixStream,
    request: &Value,
    timeout: Option<Duration>,
) -> std::io::Result<Value> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(Some(QUICK))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    match read {
        Ok(0) => Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the cluster closed the connection without a reply",
        )),
        Ok(_) => serde_json::from_str(&line)
            .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, format!("bad reply: {e}"))),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            Err(std::io::Error::new(ErrorKind::TimedOut, "no reply in time"))
        }
        Err(e) => Err(e),
    }
}

/// A live cluster found in the socket directory, with its status.
pub struct Live {
    /// Its name (the socket file's name without `.sock`).
    pub name: String,
    /// Its `status` reply.
    pub status: Value,
}

/// Every cluster of this user that answers in `dir`, by name; stale socket files (their
/// primary is gone), other users' sockets and non-sockets are skipped.
pub fn live_clusters(dir: &Path) -> Vec<Live> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
        else {
            continue;
        };
        let Ok(stream) = UnixStream::connect(&path) else {
            continue;
        };
        let Ok(status) = exchange(stream, &json!({"v": 1, "cmd": "status"}), Some(QUICK)) else {
            continue;
        };
        if status["ok"] == json!(true) {
            found.push(Live {
                name: name.to_string(),
                status,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// `95` → `1m35s`: the two largest units.
pub fn format_uptime(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// `12_345_678` → `11.8M`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if bytes < 1024 {
        return format!("{bytes}B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1}{}", UNITS[unit])
}

/// Prints `rows` as left-aligned columns (the last one unpadded).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Writes `text` on stdout; a closed stdout loses it, never panics.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(format_uptime(5.4), "5s");
        assert_eq!(format_uptime(95.0), "1m35s");
        assert_eq!(format_uptime(3_725.0), "1h02m");
        assert_eq!(format_uptime(90_000.0), "1d01h");
        assert_eq!(format_bytes(512), "512B");
        assert_eq!(format_bytes(12 * 1024 * 1024 + 300 * 1024), "12.3M");
        assert_eq!(
            table(&[
                vec!["A".into(), "BB".into()],
                vec!["ccc".into(), "d".into()]
            ]),
            "A    BB\nccc  d\n"
        );
    }
}
