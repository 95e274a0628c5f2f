//! `forkline stop NAME [--now]`: a graceful stop (or an immediate one), waited for until the
//! cluster's control socket is gone.

use std::time::{Duration, Instant};

use clap::Args;
use forkline::control::{Done, Request};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// The longest `stop` waits for the cluster to be gone.
const STOP_WAIT: Duration = Duration::from_secs(600);

/// Arguments of `forkline stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// Kill the workers at once instead of letting them finish (SIGKILL)
    #[arg(long)]
    pub now: bool,

    /// Which cluster: NAME, or --control PATH.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `stop`.
pub fn stop(args: StopArgs) -> Result<i32, CliError> {
    let target = args.cluster.target()?;
    target.call::<Done>(Request::Stop { now: args.now }, Some(control::QUICK))?;
    let deadline = Instant::now() + STOP_WAIT;
    while target.answers() {
        if Instant::now() >= deadline {
            return Err(CliError::Runtime(format!(
                "{}: still stopping after {}s",
                target.name,
                STOP_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    control::print(&format!("{}: stopped\n", target.name));
    Ok(0)
}
