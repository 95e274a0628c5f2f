//! The client side of the control socket (`docs/CONTROL.md`): where a cluster's socket lives,
//! and one request/reply over it, for `status`, `ls`, `reload`, `scale`, `restart`, `stop`,
//! `upgrade` and `top` (`logs` reads a stream of its own). Requests and replies are the
//! protocol's types, `forkline::control`.
//!
//! A cluster named NAME serves `DIR/NAME.sock`, DIR being `$XDG_RUNTIME_DIR/forkline` when
//! XDG_RUNTIME_DIR is set, else `/run/forkline` for root, else `$TMPDIR/forkline-UID`.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use forkline::control::{Reply, Request, RequestLine, SlotStatus, Status};
use serde::de::DeserializeOwned;

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

    /// Sends `request` and returns the answer when the reply says `ok`; a reply that does not
    /// is a runtime error with the reply's own words. `timeout` bounds the wait for the reply
    /// (`None`: a reload or restart, which takes as long as it takes).
    pub fn call<T: DeserializeOwned>(
        &self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<T, CliError> {
        self.send(request, timeout)?
            .into_result()
            .map_err(|failure| CliError::Runtime(format!("{}: {failure}", self.name)))
    }

    /// Sends `request` and returns the reply as it is (a permission-denied reply is an error;
    /// so is a reply that is not one of type `T`).
    pub fn send<T: DeserializeOwned>(
        &self,
        request: Request,
        timeout: Option<Duration>,
    ) -> Result<Reply<T>, CliError> {
        let stream = self.connect()?;
        let reply = exchange(stream, request, timeout).map_err(|e| self.broken(e))?;
        match reply {
            Reply::Failed(failure) if failure.error.starts_with("permission denied") => {
                Err(self.permission_denied())
            }
            reply => Ok(reply),
        }
    }

    /// The error for a control socket that failed mid-conversation.
    pub fn broken(&self, e: std::io::Error) -> CliError {
        CliError::Runtime(format!(
            "{}: control socket {}: {e}",
            self.name,
            self.path.display()
        ))
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

/// `request` as the line that carries it: in this build's protocol version, with its newline.
pub fn request_line(request: Request) -> std::io::Result<String> {
    let mut line = serde_json::to_string(&RequestLine::new(request))
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e))?;
    line.push('\n');
    Ok(line)
}

/// `line` as one reply of type `R`; one that is not is an error that says why.
pub fn parse_reply<R: DeserializeOwned>(line: &str) -> std::io::Result<R> {
    serde_json::from_str(line)
        .map_err(|e| std::io::Error::new(ErrorKind::InvalidData, format!("bad reply: {e}")))
}

/// Writes one request line and reads one reply line.
fn exchange<T: DeserializeOwned>(
    mut stream: UnixStream,
    request: Request,
    timeout: Option<Duration>,
) -> std::io::Result<Reply<T>> {
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(Some(QUICK))?;
    stream.write_all(request_line(request)?.as_bytes())?;
    let mut line = String::new();
    let read = BufReader::new(&stream).read_line(&mut line);
    match read {
        Ok(0) => Err(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the cluster closed the connection without a reply",
        )),
        Ok(_) => parse_reply(&line),
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
    /// Its `status` answer.
    pub status: Status,
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
        if let Ok(Reply::Ok(status)) = exchange(stream, Request::Status, Some(QUICK)) {
            found.push(Live {
                name: name.to_string(),
                status,
            });
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

/// A value, or `-` when there is none.
pub fn or_dash<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// A slot's state as the tables show it: its worker's state (`-` without one), `gave-up` once
/// the slot gave up, `(crash loop)` while it keeps dying young, `(replacing: PID)` while a
/// replacement is on trial.
pub fn slot_state(slot: &SlotStatus) -> String {
    let mut state = if slot.gave_up {
        "gave-up".to_string()
    } else if slot.crash_loop {
        format!("{} (crash loop)", or_dash(slot.state))
    } else {
        or_dash(slot.state)
    };
    if let Some(pid) = slot.replacement_pid {
        state.push_str(&format!(" (replacing: {pid})"));
    }
    state
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

    #[test]
    fn slot_states() {
        let mut w = SlotStatus::default();
        assert_eq!(slot_state(&w), "-");
        w.state = Some(forkline::WorkerState::Ready);
        w.crash_loop = true;
        w.replacement_pid = Some(7);
        assert_eq!(slot_state(&w), "ready (crash loop) (replacing: 7)");
        w.gave_up = true;
        w.replacement_pid = None;
        assert_eq!(slot_state(&w), "gave-up");
    }

    /// Sends `request` to a one-shot control socket that answers `reply`; returns what `send`
    /// made of the answer, and the request line the socket read.
    fn ask<T: DeserializeOwned>(
        tag: &str,
        reply: &'static str,
        request: Request,
    ) -> (Result<Reply<T>, CliError>, String) {
        let dir = std::env::temp_dir().join(format!("forkline-cli-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut request = String::new();
            BufReader::new(&stream).read_line(&mut request).unwrap();
            (&stream)
                .write_all(format!("{reply}\n").as_bytes())
                .unwrap();
            request
        });
        let target = Target::new(Some("web"), Some(&path)).unwrap();
        let answer = target.send(request, Some(QUICK));
        let sent = server.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        (answer, sent)
    }

    #[test]
    fn requests_carry_the_version_and_replies_are_typed() {
        use forkline::control::{Scaled, CONTROL_VERSION};
        let request = Request::Scale {
            workers: Some(4),
            delta: None,
        };
        let (reply, sent) = ask::<Scaled>("typed", r#"{"ok":true,"workers":4}"#, request);
        assert_eq!(reply.unwrap(), Reply::Ok(Scaled::new(4)));
        assert_eq!(
            sent,
            format!("{{\"v\":{CONTROL_VERSION},\"cmd\":\"scale\",\"workers\":4}}\n")
        );
    }

    #[test]
    fn replies_that_fail_or_do_not_parse() {
        let (reply, _) = ask::<Status>("bad", r#"{"ok":true,"pid":"x"}"#, Request::Status);
        let text = reply.unwrap_err().to_string();
        assert!(text.starts_with("web: control socket "), "{text}");
        assert!(text.contains("bad reply: invalid type"), "{text}");

        let denied = r#"{"ok":false,"error":"permission denied: no"}"#;
        let (reply, _) = ask::<Status>("denied", denied, Request::Status);
        let text = reply.unwrap_err().to_string();
        assert!(text.contains("belongs to another user"), "{text}");

        let refused = r#"{"ok":false,"error":"no worker in slot 9"}"#;
        let (reply, _) = ask::<forkline::control::Done>("refused", refused, Request::Reload);
        let failure = reply.unwrap().into_result().unwrap_err();
        assert_eq!(failure.error, "no worker in slot 9");
    }
}
