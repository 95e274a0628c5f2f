//! `forkline completions SHELL`: prints the completion script clap_complete writes for the
//! command line, for bash, zsh, fish, elvish or PowerShell.

use std::io::Write;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use crate::cli::Cli;

/// Arguments of `forkline completions`.
#[derive(Debug, Args)]
#[command(after_help = "Example: forkline completions bash > /etc/bash_completion.d/forkline")]
pub struct CompletionsArgs {
    /// The shell to complete in
    #[arg(value_name = "SHELL", value_enum)]
    pub shell: Shell,
}

/// Prints the script on stdout (a closed stdout loses it, it does not panic).
pub fn completions(args: CompletionsArgs) {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "forkline", &mut script);
    let _ = std::io::stdout().write_all(&script);
}
