//! `forkline upgrade NAME`: replace the cluster's primary itself (what SIGUSR2 does), waited
//! for. The running primary starts its program again from disk as a new primary, which takes
//! over once its workers are ready; prints the new primary's pid, or why it did not take over
//! (exit 1; the running primary carries on).

use clap::Args;
use forkline::control::{Request, Upgraded};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline upgrade`.
#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Which cluster: NAME, or --control PATH.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `upgrade`.
pub fn upgrade(args: UpgradeArgs) -> Result<i32, CliError> {
    let target = args.cluster.target()?;
    let upgraded: Upgraded = target.call(Request::Upgrade, None)?;
    control::print(&format!(
        "{}: upgraded: primary {} took over\n",
        target.name, upgraded.pid
    ));
    Ok(0)
}
