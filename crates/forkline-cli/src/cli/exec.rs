//! `forkline __exec -- PROGRAM ARGS...`: the shim every worker starts as. Under the systemd
//! convention `LISTEN_PID` must hold the worker's own pid, which the primary cannot know
//! before it forks; so the primary runs this shim, which sets `LISTEN_PID` to its own pid and
//! `exec`s the real program — the pid stays the same. It touches no file descriptor: the
//! sockets at fds 3.., the IPC socket and stdio pass through exec unchanged.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;

use clap::Args;

/// Arguments of the hidden `__exec` subcommand.
#[derive(Debug, Args)]
pub struct ExecArgs {
    /// argv[0] for the program (the command as the user typed it)
    #[arg(long, allow_hyphen_values = true)]
    pub arg0: Option<OsString>,
    /// The resolved program and its arguments
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<OsString>,
}

/// Replaces this process with the worker program. Returns only on failure, with the exit code
/// to use (127: not found, 126: not executable), as a shell would.
pub fn exec(args: ExecArgs) -> i32 {
    let mut words = args.command.into_iter();
    let program = words.next().expect("clap requires the command");
    let mut command = std::process::Command::new(&program);
    command.args(words);
    if let Some(arg0) = args.arg0 {
        command.arg0(arg0);
    }
    if std::env::var_os("LISTEN_FDS").is_some() {
        command.env("LISTEN_PID", std::process::id().to_string());
    }
    let error = command.exec();
    let _ = writeln!(
        std::io::stderr(),
        "forkline: error: cannot run {}: {error}",
        program.to_string_lossy()
    );
    match error.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}
