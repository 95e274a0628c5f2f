//! `forkline restart NAME SLOT`: replaces one slot's worker (a new one starts, then the old one
//! stops), waited for.

use clap::Args;
use serde_json::json;

use crate::control::{self, Target, TargetArgs};
use crate::error::CliError;

/// Arguments of `forkline restart`.
#[derive(Debug, Args)]
#[command(
    override_usage = "forkline restart NAME SLOT\n       forkline restart --control PATH SLOT"
)]
pub struct RestartArgs {
    /// The cluster's name (see forkline ls)
    #[arg(value_name = "NAME")]
    pub name: String,

    /// The worker slot (its FORKLINE_WORKER_ID; see forkline status)
    #[arg(value_name = "SLOT")]
    pub slot: Option<String>,

    #[command(flatten)]
    pub target: TargetArgs,
}

/// Runs `restart`.
pub fn restart(args: RestartArgs) -> Result<i32, CliError> {
    let (name, slot) = match (&args.slot, &args.target.control) {
        (Some(slot), _) => (Some(args.name.as_str()), slot.as_str()),
        (None, Some(_)) => (None, args.name.as_str()),
        (None, None) => {
            return Err(CliError::Usage(
                "restart: give the cluster's name and a SLOT".into(),
            ))
        }
    };
    let slot: usize = slot.parse().map_err(|_| {
        CliError::Usage(format!(
            "restart: invalid SLOT `{slot}`: expected a slot number (see forkline status)"
        ))
    })?;
    let target = Target::new(name, &args.target)?;
    let reply = target.send(json!({"cmd": "restart", "slot": slot}), None)?;
    if reply["ok"] == json!(true) {
        control::print(&format!("{}: slot {slot} restarted\n", target.name));
        return Ok(0);
    }
    let error = reply["error"].as_str().unwrap_or("the restart failed");
    Err(CliError::Runtime(format!(
        "{}: restart of slot {slot} failed: {error}",
        target.name
    )))
}
