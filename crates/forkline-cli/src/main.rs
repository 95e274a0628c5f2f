//! The `forkline` command: cluster any server program over every core.

use clap::Parser;

/// Run a server on every core.
#[derive(Debug, Parser)]
#[command(name = "forkline", version, about)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
}
