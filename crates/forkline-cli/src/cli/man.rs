//! `forkline man [COMMAND]`: prints a man page in roff, written by clap_mangen from the command
//! line: forkline(1), or one subcommand's page, such as forkline-run(1) with every option.

use std::io::Write;

use clap::{Args, CommandFactory};

use crate::cli::Cli;
use crate::error::CliError;
use crate::parse;

/// Arguments of `forkline man`.
#[derive(Debug, Args)]
#[command(after_help = "Example: forkline man run | man -l -")]
pub struct ManArgs {
    /// A subcommand, for its own page (forkline-run(1), ...) [default: forkline(1)]
    #[arg(value_name = "COMMAND")]
    pub command: Option<String>,
}

/// Prints the page on stdout (a closed stdout loses it, it does not panic).
pub fn man(args: ManArgs) -> Result<(), CliError> {
    let mut forkline = Cli::command();
    // Names subcommands `forkline-run` and gives them forkline's version.
    forkline.build();
    let page = match &args.command {
        None => forkline,
        Some(name) => {
            let pages: Vec<&clap::Command> = forkline
                .get_subcommands()
                .filter(|sub| !sub.is_hide_set() && sub.get_name() != "help")
                .collect();
            match pages.iter().find(|sub| sub.get_name() == name) {
                Some(sub) => (*sub).clone(),
                None => {
                    let names: Vec<&str> = pages.iter().map(|sub| sub.get_name()).collect();
                    return Err(CliError::Usage(format!(
                        "man: no command `{name}` (expected one of {}{})",
                        names.join(", "),
                        parse::did_you_mean(name, &names)
                    )));
                }
            }
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .source(format!("forkline {}", env!("CARGO_PKG_VERSION")))
        .render(&mut roff)
        .map_err(|e| CliError::Runtime(format!("cannot write the man page: {e}")))?;
    let _ = std::io::stdout().write_all(&roff);
    Ok(())
}
