//! `forkline restart NAME SLOT`: replaces one slot's worker (a new one starts, then the old one
//! stops), waited for.

use clap::Args;
use forkline::control::{Done, Reply, Request};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline restart`.
#[derive(Debug, Args)]
#[command(
    override_usage = "forkline restart NAME SLOT\n       forkline restart --control PATH SLOT",
    mut_arg("name", ClusterArgs::name_always_given),
    mut_arg("slot", ClusterArgs::word_after_name)
)]
pub struct RestartArgs {
    /// Which cluster: NAME, or --control PATH (then NAME holds the SLOT).
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The worker slot (its FORKLINE_WORKER_ID; see forkline status)
    #[arg(value_name = "SLOT")]
    pub slot: Option<String>,
}

/// Runs `restart`.
pub fn restart(args: RestartArgs) -> Result<i32, CliError> {
    let (cluster, slot) = args.cluster.with_word(
        args.slot.as_deref(),
        "restart: give the cluster's name and a SLOT",
    )?;
    let slot: usize = slot.parse().map_err(|_| {
        CliError::Usage(format!(
            "restart: invalid SLOT `{slot}`: expected a slot number (see forkline status)"
        ))
    })?;
    let target = cluster.target()?;
    match target.send::<Done>(Request::Restart { slot }, None)? {
        Reply::Ok(_) => {
            control::print(&format!("{}: slot {slot} restarted\n", target.name));
            Ok(0)
        }
        Reply::Failed(failure) => Err(CliError::Runtime(format!(
            "{}: restart of slot {slot} failed: {failure}",
            target.name
        ))),
    }
}
