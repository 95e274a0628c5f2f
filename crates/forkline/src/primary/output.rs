//! Worker output: each line of a worker's stdout/stderr, prefixed with who wrote it and written
//! whole, so lines from different workers never interleave mid-line.

use std::io::Write;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};

/// Longest line passed through in one piece; longer lines are split.
const MAX_LINE: usize = 64 * 1024;

/// Where a pumped stream goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Sink {
    Stdout,
    Stderr,
}

/// `[worker ID pid PID] ` or, with a name, `[NAME:ID PID] `.
pub(crate) fn prefix(name: Option<&str>, id: usize, pid: u32) -> String {
    match name {
        Some(name) => format!("[{name}:{id} {pid}] "),
        None => format!("[worker {id} pid {pid}] "),
    }
}

/// Copies `stream` line by line to `sink`, each line prefixed and written with one call.
pub(crate) async fn pump<R: AsyncRead + Unpin>(stream: R, prefix: String, sink: Sink) {
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut line)
            .await;
        match read {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            line.push(b'\n');
        }
        let mut out = Vec::with_capacity(prefix.len() + line.len());
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(&line);
        // One write_all under the std lock: whole lines, never interleaved.
        let _ = match sink {
            Sink::Stdout => std::io::stdout().lock().write_all(&out),
            Sink::Stderr => std::io::stderr().lock().write_all(&out),
        };
    }
}
