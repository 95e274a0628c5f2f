//! `forkline stop NAME [--now]`: a graceful stop (or an immediate one), waited for until the
//! cluster's control socket is gone.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::control::{self, Target, TargetArgs};
use crate::error::CliError;

/// The longest `stop` waits for the cluster to be gone.
const STOP_WAIT: Duration = Duration::from_secs(600);

/// Arguments of `forkline stop`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// The cluster's name (see forkline ls)
    #[arg(value_name = "NAME", required_unless_present = "control")]
    pub name: Option<String>,

    /// Kill the workers at once instead of letting them finish (SIGKILL)
    #[arg(long)]
    pub now: bool,

    #[command(flatten)]
    pub target: TargetArgs,
}

/// Runs `stop`.
pub fn stop(args: StopArgs) -> Result<i32, CliError> {
    let target = Target::new(args.name.as_deref(), &args.target)?;
    target.call(
        json!({"cmd": "stop", "now": args.now}),
        Some(control::QUICK),
    )?;
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
