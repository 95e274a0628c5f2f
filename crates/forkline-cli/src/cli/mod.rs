//! The command line: the top-level `forkline` parser and one module per subcommand (`run`,
//! `check-config`, the control commands `status`, `ls`, `reload`, `scale`, `restart`, `stop`,
//! `logs`, `top` and `upgrade`, `completions` and `man`, and the hidden `__exec` shim that
//! starts each worker).

pub mod check_config;
pub mod cluster_args;
pub mod completions;
pub mod exec;
pub mod logs;
pub mod ls;
pub mod man;
pub mod reload;
pub mod restart;
pub mod run;
pub mod scale;
pub mod send;
pub mod status;
pub mod stop;
pub mod top;
pub mod top_model;
pub mod upgrade;

use clap::{Parser, Subcommand};

/// Run a server on every core: forkline clusters any program — Node, Python, Rust, Go — over
/// a shared listening socket, restarts workers that die and stops them gracefully.
#[derive(Debug, Parser)]
#[command(
    name = "forkline",
    version,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = "See docs/CLI.md for the config file, the environment variables and systemd use."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run COMMAND as a cluster of workers
    Run(run::RunArgs),
    /// Check a config file and print the effective settings
    CheckConfig(check_config::CheckConfigArgs),
    /// Show a running cluster's workers
    Status(status::StatusArgs),
    /// List this user's running clusters
    Ls(ls::LsArgs),
    /// Replace every worker of a running cluster, one at a time, and wait for it
    Reload(reload::ReloadArgs),
    /// Set a running cluster's number of workers: N, +K or -K
    Scale(scale::ScaleArgs),
    /// Replace one worker of a running cluster
    Restart(restart::RestartArgs),
    /// Send a JSON message to one worker of a running cluster, or to all of them
    Send(send::SendArgs),
    /// Stop a running cluster
    Stop(stop::StopArgs),
    /// Print a running cluster's recent worker output, and follow it with -f
    Logs(logs::LogsArgs),
    /// Replace a running cluster's primary with a new one started from disk, and wait for it
    Upgrade(upgrade::UpgradeArgs),
    /// Watch a running cluster live: workers, rates, reload and scale keys
    Top(top::TopArgs),
    /// Print a shell completion script for forkline
    Completions(completions::CompletionsArgs),
    /// Print forkline's man page (roff)
    Man(man::ManArgs),
    /// (internal) Start one worker: set LISTEN_PID to our own pid, then exec COMMAND
    #[command(name = "__exec", hide = true)]
    Exec(exec::ExecArgs),
}
