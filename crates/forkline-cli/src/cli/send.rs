//! `forkline send NAME SLOT|all JSON`: a message for the workers of a running cluster — Node's
//! `process.on('message')`, the forkline library's `Worker::messages`.

use clap::Args;
use forkline::control::{Reply, Request, Sent};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline send`.
#[derive(Debug, Args)]
#[command(
    override_usage = "forkline send NAME SLOT|all JSON\n       forkline send --control PATH SLOT|all JSON",
    mut_arg("name", ClusterArgs::name_always_given),
    mut_arg("to", ClusterArgs::word_after_name)
)]
pub struct SendArgs {
    /// Which cluster: NAME, or --control PATH (then NAME holds the SLOT).
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The worker's slot (see forkline status), or all
    #[arg(value_name = "SLOT|all")]
    pub to: Option<String>,

    /// The message: one JSON value (an object, a string in quotes, a number, ...)
    #[arg(value_name = "JSON", index = 3)]
    pub message: Option<String>,
}

/// Runs `send`.
pub fn send(args: SendArgs) -> Result<i32, CliError> {
    let usage = "send: give the cluster's name, a SLOT (or all) and a JSON message";
    // With --control, clap puts SLOT in NAME and the message in SLOT|all.
    let (cluster, to, message) = match (&args.cluster.control, args.message) {
        (Some(_), None) => {
            let (cluster, to) = args.cluster.with_word(None, usage)?;
            (cluster, to, args.to)
        }
        (_, message) => {
            let (cluster, to) = args.cluster.with_word(args.to.as_deref(), usage)?;
            (cluster, to, message)
        }
    };
    let message = message.ok_or_else(|| CliError::Usage(usage.into()))?;
    let message: serde_json::Value = serde_json::from_str(&message)
        .map_err(|e| CliError::Usage(format!("send: the message is not JSON: {e}")))?;
    let slot = match to.as_str() {
        "all" => None,
        slot => Some(slot.parse::<usize>().map_err(|_| {
            CliError::Usage(format!(
                "send: invalid SLOT `{slot}`: expected a slot number or all"
            ))
        })?),
    };
    let target = cluster.target()?;
    match target.send::<Sent>(Request::Send { slot, message }, Some(control::QUICK))? {
        Reply::Ok(sent) => {
            control::print(&format!(
                "{}: sent to {} worker{}\n",
                target.name,
                sent.workers,
                if sent.workers == 1 { "" } else { "s" }
            ));
            Ok(0)
        }
        Reply::Failed(failure) => Err(CliError::Runtime(format!(
            "{}: send failed: {failure}",
            target.name
        ))),
    }
}
