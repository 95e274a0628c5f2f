//! `forkline check-config [FILE]`: validates a config file and prints the settings `forkline
//! run` would use with it — after the environment variables and any flags given here — as
//! TOML, each line commented with where its value came from. It checks values, not the
//! machine: commands, users and directories are looked up by `run`.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{ArgMatches, Args};

use crate::error::CliError;
use crate::settings::Settings;

/// Arguments of `forkline check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file to check [default: --config, FORKLINE_CONFIG, else ./forkline.toml]
    #[arg(value_name = "FILE")]
    pub file: Option<PathBuf>,

    /// Settings to apply over the file, as for `forkline run`.
    #[command(flatten)]
    pub settings: Settings,

    /// The worker command, as for `forkline run` (overrides the file's `command`)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// Runs `check-config`; prints the effective settings on stdout (a closed stdout loses them,
/// it does not panic).
pub fn check_config(args: CheckConfigArgs, matches: &ArgMatches) -> Result<(), CliError> {
    let default_file = PathBuf::from("forkline.toml");
    let file = args.file.clone().or_else(|| {
        (args.settings.config.is_none() && default_file.exists()).then_some(default_file)
    });
    if file.is_none() && args.settings.config.is_none() {
        return Err(CliError::Usage(
            "no config file to check: give FILE or --config (./forkline.toml does not exist)"
                .into(),
        ));
    }
    let settings = args
        .settings
        .resolve(matches, args.command, file.as_deref())?;
    settings.check()?;
    let path = settings.config.as_ref().expect("a file was given");
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "# {}: OK\n{}", path.display(), settings.to_toml());
    Ok(())
}
