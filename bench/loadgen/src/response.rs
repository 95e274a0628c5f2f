//! The seed workload's wire format: the server writes one line, `Request handled by
//! worker-<PID>\n`, and closes. Both the server side (`limit-server`) and the client side
//! (`loadgen`) go through this module so they cannot drift apart.

/// Everything before the PID in a response line.
pub const PREFIX: &str = "Request handled by worker-";

/// The full response line a worker with process id `pid` writes.
pub fn format_response(pid: u32) -> String {
    format!("{PREFIX}{pid}\n")
}

/// The worker PID named by a response, or `None` when the bytes are not a response line.
///
/// A trailing newline (and `\r`) is accepted but not required, so a server that closes without
/// one still counts; anything after the digits is rejected.
pub fn parse_worker_pid(bytes: &[u8]) -> Option<u32> {
    let rest = bytes.strip_prefix(PREFIX.as_bytes())?;
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
    if rest.is_empty() || !rest.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(rest).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        assert_eq!(
            parse_worker_pid(format_response(4242).as_bytes()),
            Some(4242)
        );
    }

    #[test]
    fn accepts_missing_newline_and_crlf() {
        assert_eq!(parse_worker_pid(b"Request handled by worker-7"), Some(7));
        assert_eq!(
            parse_worker_pid(b"Request handled by worker-7\r\n"),
            Some(7)
        );
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_worker_pid(b""), None);
        assert_eq!(parse_worker_pid(b"Request handled by worker-\n"), None);
        assert_eq!(parse_worker_pid(b"Request handled by worker-12x\n"), None);
        assert_eq!(parse_worker_pid(b"HTTP/1.1 200 OK\r\n"), None);
        assert_eq!(parse_worker_pid(b"Request handled by worker-1\nmore"), None);
    }
}
