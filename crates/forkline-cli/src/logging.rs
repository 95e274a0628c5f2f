//! The primary's own log: `tracing` to stderr as text or JSON (`--log-format`), filtered by
//! `--log-level` (else `RUST_LOG`, else `info`), without colours unless stderr is a terminal and
//! without timestamps under journald (which adds its own). Worker output does not go through
//! here: the library copies it line by line in the same format.
//!
//! Logging must never take the primary down. When nobody reads stderr any more (`forkline run
//! ... 2>&1 | head -1`, a log collector that died), every write fails with EPIPE. By default
//! tracing-subscriber then reports the failure with `eprintln!` — to the same closed stderr,
//! which panics, killing the primary or the task that logged (a worker's exit handling, and
//! with it its restart). `log_internal_errors(false)` turns that report off: a line that
//! cannot be written is dropped, and the primary keeps supervising.

use std::io::IsTerminal;

use forkline::LogFormat;
use tracing_subscriber::EnvFilter;

/// Installs the subscriber: `format` text or JSON (tracing-subscriber's, one object per line),
/// filtered by `level` (an `EnvFilter` directive such as `debug` or `forkline=debug`; the
/// settings fall back to `RUST_LOG`, then `info`). Call once, after the environment was read.
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(level).map_err(|e| format!("--log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(format == LogFormat::Text && std::io::stderr().is_terminal())
        .with_target(false)
        .log_internal_errors(false);
    // A second call (there is none) would only keep the first subscriber.
    let _ = match (format, timestamps()) {
        (LogFormat::Text, true) => builder.try_init(),
        (LogFormat::Text, false) => builder.without_time().try_init(),
        (LogFormat::Json, true) => builder.json().try_init(),
        (LogFormat::Json, false) => builder.json().without_time().try_init(),
    };
    Ok(())
}

/// True unless journald collects the output (it stamps each line itself): every line the
/// primary writes, its own and its workers', then starts with a timestamp.
pub fn timestamps() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_none()
}
