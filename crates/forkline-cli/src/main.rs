//! The `forkline` command: cluster any server program over every core.
//!
//! `main` parses the command line and turns every failure into one line on stderr and an exit
//! code: 2 for usage errors (flags, values, config file, command), 1 for runtime errors.
//! Nothing here prints with `println!`/`eprintln!`, which panic when the stream is closed: a
//! line that cannot be written is dropped (see [`error_line`]).

#![forbid(unsafe_code)]

mod activation;
mod cli;
mod config;
mod control;
mod error;
mod hints;
mod logging;
mod parse;
mod proc_net;
mod settings;
mod systemd;

use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches};

use cli::{Cli, Command};
use error::CliError;

fn main() {
    let matches = match Cli::command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => usage_error(e),
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    let sub = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    let result = match cli.command {
        Command::Exec(args) => std::process::exit(cli::exec::exec(args)),
        Command::Run(args) => cli::run::run(args, &sub),
        Command::CheckConfig(args) => cli::check_config::check_config(args, &sub).map(|()| 0),
        Command::Status(args) => cli::status::status(args),
        Command::Ls(args) => cli::ls::ls(args),
        Command::Reload(args) => cli::reload::reload(args),
        Command::Scale(args) => cli::scale::scale(args),
        Command::Restart(args) => cli::restart::restart(args),
        Command::Send(args) => cli::send::send(args),
        Command::Stop(args) => cli::stop::stop(args),
        Command::Logs(args) => cli::logs::logs(args),
        Command::Top(args) => cli::top::top(args),
        Command::Upgrade(args) => cli::upgrade::upgrade(args),
        Command::Completions(args) => {
            cli::completions::completions(args);
            Ok(0)
        }
        Command::Man(args) => cli::man::man(args).map(|()| 0),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            error_line(&e);
            std::process::exit(e.exit_code());
        }
    }
}

/// Writes `forkline: error: ...` on stderr; a closed stderr loses the line, never panics.
fn error_line(error: &CliError) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "forkline: error: {error}");
}

/// Help and version go out as clap prints them; any other parse error becomes one line, with
/// clap's suggestion when it has one (`...; did you mean '--workers'? (see forkline --help)`).
fn usage_error(e: clap::Error) -> ! {
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        _ => {
            let rendered = e.render().to_string();
            let first = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            let message = first.strip_prefix("error: ").unwrap_or(first);
            let tip = match suggestion(&e) {
                Some(similar) => format!("; did you mean '{similar}'?"),
                None => String::new(),
            };
            let hint = match env_origin(&e) {
                Some(var) => format!("from environment variable {var}"),
                None => "see forkline --help".into(),
            };
            let error = CliError::Usage(format!("{message}{tip} ({hint})"));
            error_line(&error);
            std::process::exit(error.exit_code());
        }
    }
}

/// The argument, value or subcommand clap found close to what was given, if any.
fn suggestion(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    [
        ContextKind::SuggestedArg,
        ContextKind::SuggestedValue,
        ContextKind::SuggestedSubcommand,
    ]
    .into_iter()
    .find_map(|kind| match e.get(kind)? {
        ContextValue::String(s) => Some(s.clone()),
        ContextValue::Strings(list) => list.first().cloned(),
        _ => None,
    })
}

/// The environment variable a bad value came from, when it did not come from a flag.
fn env_origin(e: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue};
    let text = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        _ => None,
    };
    let arg = text(ContextKind::InvalidArg)?;
    let value = text(ContextKind::InvalidValue)?;
    let long = arg
        .split([' ', '='])
        .next()?
        .trim_start_matches('-')
        .to_string();
    let given: Vec<String> = std::env::args().skip(1).collect();
    let command = Cli::command();
    let found = command
        .get_subcommands()
        .flat_map(|sub| sub.get_arguments())
        .find(|a| a.get_long() == Some(long.as_str()))?;
    let on_command_line = given.iter().any(|word| {
        word == &format!("--{long}")
            || word.starts_with(&format!("--{long}="))
            || found
                .get_short()
                .is_some_and(|c| word.starts_with(&format!("-{c}")))
    });
    if on_command_line {
        return None;
    }
    let var = found.get_env()?.to_string_lossy().into_owned();
    let set = std::env::var(&var).ok()?;
    (set == value || set.split(',').any(|part| part == value)).then_some(var)
}
