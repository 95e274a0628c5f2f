//! The primary's own log: `tracing` to stderr, filtered by `RUST_LOG` (default `info`),
//! without colours unless stderr is a terminal and without timestamps under journald (which
//! adds its own). Worker output does not go through here: the library copies it line by line.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber. Call once, after the environment has been read.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let installed = if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().try_init()
    } else {
        builder.try_init()
    };
    // A second call (there is none) would only keep the first subscriber.
    let _ = installed;
}
