//! The CLI's errors and exit codes: a usage error (bad flag, value, config file or command)
//! exits 2, a runtime error (a port in use, a socket that cannot be created) exits 1. Either is
//! printed as one line, `forkline: error: ...`.

use std::fmt;

/// A failure of the `forkline` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    /// The command line, the environment or the config file asks for something impossible.
    Usage(String),
    /// Something failed while running.
    Runtime(String),
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Runtime(_) => 1,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (CliError::Usage(message) | CliError::Runtime(message)) = self;
        // One line, whatever the cause's text looks like.
        let mut first = true;
        for line in message.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if !first {
                f.write_str("; ")?;
            }
            f.write_str(line)?;
            first = false;
        }
        Ok(())
    }
}

impl std::error::Error for CliError {}

/// Maps a library error to a usage or runtime error: what the user wrote wrong (a missing or
/// non-executable program, an unknown user, an impossible option) is usage; the rest is
/// runtime.
pub fn from_library(error: forkline::Error) -> CliError {
    use forkline::Error;
    match error {
        Error::ExecNotFound(path) => {
            CliError::Usage(format!("command not found: {}", path.display()))
        }
        Error::ExecNotExecutable(path) => {
            CliError::Usage(format!("command is not executable: {}", path.display()))
        }
        Error::UnknownId { kind, id } => CliError::Usage(format!("unknown {kind} {id}")),
        // Fields named in capitals are environment variables, the others flags.
        Error::InvalidOption { field, reason } if field.starts_with("FORKLINE_") => {
            CliError::Usage(format!("invalid {field}: {reason}"))
        }
        Error::InvalidOption { field, reason } => {
            CliError::Usage(format!("invalid --{}: {reason}", field.replace('_', "-")))
        }
        Error::Listen { address, source } => {
            CliError::Runtime(format!("cannot listen on {address}: {source}"))
        }
        other => CliError::Runtime(other.to_string()),
    }
}
