//! The primary's own log: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! without colours unless stderr is a terminal and without timestamps under journald (which
//! adds its own). Worker output does not go through here: the library copies it line by line.
//!
//! Logging must never take the primary down. When nobody reads stderr any more (`forkline run
//! ... 2>&1 | head -1`, a log collector that died), every write fails with EPIPE. By default
//! tracing-subscriber then reports the failure with `eprintln!` — to the same closed stderr,
//! which panics, killing the primary or the task that logged (a worker's exit handling, and
//! with it its restart). `log_internal_errors(false)` turns that report off: a line that
//! cannot be written is dropped, and the primary keeps supervising.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber. Call once, after the environment has been read.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .log_internal_errors(false);
    let installed = if !timestamps() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // A second call (there is none) would only keep the first subscriber.
    let _ = installed;
}

/// True unless journald collects the output (it stamps each line itself): every line the
/// primary writes, its own and its workers', then starts with a timestamp.
pub fn timestamps() -> bool {
    std::env::var_os("JOURNAL_STREAM").is_none()
}
