//! `forkline reload NAME`: a rolling reload, waited for. Prints success, or the slot whose new
//! worker failed and why (exit 1; the old worker keeps serving).

use clap::Args;
use forkline::control::{Done, Reply, Request};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline reload`.
#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// Which cluster: NAME, or --control PATH.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `reload`.
pub fn reload(args: ReloadArgs) -> Result<i32, CliError> {
    let target = args.cluster.target()?;
    let failure = match target.send::<Done>(Request::Reload, None)? {
        Reply::Ok(_) => {
            control::print(&format!(
                "{}: reloaded: every worker replaced\n",
                target.name
            ));
            return Ok(0);
        }
        Reply::Failed(failure) => failure,
    };
    let error = &failure.error;
    match failure.slot {
        Some(slot) => Err(CliError::Runtime(format!(
            "{}: reload failed at slot {slot}: {error}; the old worker keeps serving",
            target.name
        ))),
        None => Err(CliError::Runtime(format!(
            "{}: reload failed: {error}",
            target.name
        ))),
    }
}
