//! Worker output: each line of a worker's stdout/stderr, written whole (so lines from different
//! workers never interleave mid-line) in the cluster's log format — text with the worker's
//! prefix, a timestamp and, on a terminal, a colour per worker; or one JSON object per line —
//! and kept in the output buffer for `forkline logs`.

use std::io::{IsTerminal, Write};
use std::time::SystemTime;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

use std::sync::Arc;

use crate::primary::core::Core;
use crate::primary::lifecycle::output_buffer::{OutputLine, OutputStream};
use crate::primary::options::{LogFormat, WorkerStdio};

/// Longest line passed through in one piece; longer lines are split.
const MAX_LINE: usize = 64 * 1024;

/// Colours given to workers' prefixes in turn, on a terminal (ANSI foreground codes).
const PALETTE: [u8; 6] = [36, 32, 33, 35, 34, 31];

/// `[worker ID pid PID] ` or, with a name, `[NAME:ID PID] `.
pub(crate) fn prefix(name: Option<&str>, id: usize, pid: u32) -> String {
    match name {
        Some(name) => format!("[{name}:{id} {pid}] "),
        None => format!("[worker {id} pid {pid}] "),
    }
}

/// How one worker stream's lines are written.
pub(crate) struct Style {
    format: LogFormat,
    /// The prefix, coloured if the sink is a terminal; empty for `Captured` output.
    prefix: String,
    timestamps: bool,
    name: Option<String>,
}

impl Style {
    /// The style for `stream` of the worker in `slot` with `pid`.
    pub(crate) fn new(core: &Core, slot: usize, pid: u32, stream: OutputStream) -> Style {
        let opts = &core.opts();
        let prefix = match opts.stdio {
            WorkerStdio::Prefixed => prefix(opts.name.as_deref(), slot, pid),
            _ => String::new(),
        };
        let prefix = if !prefix.is_empty() && colours(stream) {
            let colour = PALETTE[slot % PALETTE.len()];
            format!("\x1b[{colour}m{}\x1b[0m ", prefix.trim_end())
        } else {
            prefix
        };
        Style {
            format: opts.log_format,
            prefix,
            // Captured output is passed on as written: the program stamps its own lines.
            timestamps: opts.log_timestamps && opts.stdio == WorkerStdio::Prefixed,
            name: opts.name.clone(),
        }
    }

    /// The bytes written for `line`, newline included.
    fn render(&self, line: &OutputLine) -> Vec<u8> {
        match self.format {
            LogFormat::Text => {
                let mut out = Vec::with_capacity(40 + self.prefix.len() + line.line.len());
                if self.timestamps {
                    let _ = write!(out, "{} ", humantime::format_rfc3339_micros(line.time));
                }
                out.extend_from_slice(self.prefix.as_bytes());
                out.extend_from_slice(line.line.as_bytes());
                out.push(b'\n');
                out
            }
            LogFormat::Json => {
                let mut object = json!({
                    "level": "INFO",
                    "fields": {"message": line.line},
                    "target": "worker",
                    "slot": line.slot,
                    "pid": line.pid,
                    "stream": line.stream,
                });
                if self.timestamps {
                    object["timestamp"] =
                        json!(humantime::format_rfc3339_micros(line.time).to_string());
                }
                if let Some(name) = &self.name {
                    object["name"] = json!(name);
                }
                let mut out = object.to_string().into_bytes();
                out.push(b'\n');
                out
            }
        }
    }
}

/// True when lines written to `stream`'s sink get colours: a terminal, and no `NO_COLOR`.
fn colours(stream: OutputStream) -> bool {
    let terminal = match stream {
        OutputStream::Stdout => std::io::stdout().is_terminal(),
        OutputStream::Stderr | OutputStream::Message => std::io::stderr().is_terminal(),
    };
    terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Copies `stream` line by line to the primary's stdout or stderr (`which`), each line written
/// with one call, and keeps it in the cluster's output buffer.
pub(crate) async fn pump<R: AsyncRead + Unpin>(
    stream: R,
    core: Arc<Core>,
    slot: usize,
    pid: u32,
    which: OutputStream,
) {
    let style = Style::new(&core, slot, pid, which);
    let mut reader = BufReader::new(stream);
    let mut bytes = Vec::new();
    loop {
        bytes.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut bytes)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
        }
        let line = OutputLine {
            time: SystemTime::now(),
            slot,
            pid,
            stream: which,
            line: String::from_utf8_lossy(&bytes).into_owned(),
        };
        let out = style.render(&line);
        // One write_all under the std lock: whole lines, never interleaved.
        let _ = match which {
            OutputStream::Stdout => std::io::stdout().lock().write_all(&out),
            OutputStream::Stderr | OutputStream::Message => {
                std::io::stderr().lock().write_all(&out)
            }
        };
        core.output().push(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> OutputLine {
        OutputLine {
            time: SystemTime::UNIX_EPOCH,
            slot: 1,
            pid: 42,
            stream: OutputStream::Stderr,
            line: "hello \"there\"".into(),
        }
    }

    fn style(format: LogFormat, timestamps: bool) -> Style {
        Style {
            format,
            prefix: prefix(Some("web"), 1, 42),
            timestamps,
            name: Some("web".into()),
        }
    }

    #[test]
    fn text_lines_carry_the_prefix_and_a_timestamp_when_asked() {
        let plain = style(LogFormat::Text, false).render(&line());
        assert_eq!(plain, b"[web:1 42] hello \"there\"\n");
        let stamped = style(LogFormat::Text, true).render(&line());
        assert_eq!(
            String::from_utf8(stamped).unwrap(),
            "1970-01-01T00:00:00.000000Z [web:1 42] hello \"there\"\n"
        );
    }

    #[test]
    fn json_lines_are_one_object_each() {
        let out = style(LogFormat::Json, true).render(&line());
        assert_eq!(out.last(), Some(&b'\n'));
        let object: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(object["fields"]["message"], "hello \"there\"");
        assert_eq!(object["slot"], 1);
        assert_eq!(object["pid"], 42);
        assert_eq!(object["stream"], "stderr");
        assert_eq!(object["name"], "web");
        assert_eq!(object["timestamp"], "1970-01-01T00:00:00.000000Z");
    }
}
