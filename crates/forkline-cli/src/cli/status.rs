//! `forkline status NAME [--json]`: one row per worker slot (slot, pid, state, uptime,
//! restarts, connections in flight and served, RSS, CPU%), or the cluster's status object as
//! JSON.

use clap::Args;
use forkline::control::{MigrationStatus, Request, Status};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline status`.
#[derive(Debug, Args)]
#[command(mut_arg("name", |name| name.help(
    "The cluster's name (its --name, else its command's file name; see forkline ls)"
)))]
pub struct StatusArgs {
    /// Print the status object as JSON (with its `workers` list)
    #[arg(long)]
    pub json: bool,

    /// Which cluster: NAME, or --control PATH.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `status`.
pub fn status(args: StatusArgs) -> Result<i32, CliError> {
    let target = args.cluster.target()?;
    let status: Status = target.call(Request::Status, Some(control::QUICK))?;
    if args.json {
        // As a `Value` prints it (keys sorted), as the status object always printed.
        let json = serde_json::to_value(&status)
            .map_err(|e| CliError::Runtime(format!("{}: {e}", target.name)))?;
        control::print(&format!("{json}\n"));
        return Ok(0);
    }
    control::print(&render(&target.name, &status));
    Ok(0)
}

/// The status as a header line and a table.
fn render(name: &str, status: &Status) -> String {
    let name = status.name.as_deref().unwrap_or(name);
    let mut out = format!(
        "{name}: primary pid {}, {} mode{}, {}/{} workers ready, up {}{}\n",
        status.pid,
        match status.steering {
            // Steer mode says how: "steer (bpf-round-robin) mode".
            Some(how) => format!("{} ({how})", status.mode.as_str()),
            None => status.mode.as_str().to_string(),
        },
        match status.reuseport_migration {
            Some(MigrationStatus::Off) => " (queues of closing workers are reset)".to_string(),
            Some(how) => format!(" (queues migrate: {how})"),
            None => String::new(),
        },
        status.ready,
        status.target,
        control::format_uptime(status.uptime_secs),
        if status.addresses.is_empty() {
            String::new()
        } else {
            format!(", on {}", status.addresses.join(", "))
        }
    );
    let mut rows = vec![[
        "SLOT",
        "PID",
        "STATE",
        "UPTIME",
        "RESTARTS",
        "IN-FLIGHT",
        "SERVED",
        "RSS",
        "CPU",
    ]
    .map(String::from)
    .to_vec()];
    // Only round-robin and proxy put the primary on the connection path, where it counts.
    let counted = !status.mode.workers_accept();
    let count = |n: u64| control::or_dash(counted.then_some(n));
    for worker in &status.workers {
        rows.push(vec![
            worker.slot.to_string(),
            control::or_dash(worker.pid),
            control::slot_state(worker),
            control::or_dash(worker.uptime_secs.map(control::format_uptime)),
            worker.restarts.to_string(),
            count(worker.connections_in_flight),
            count(worker.connections_served),
            control::or_dash(worker.rss_bytes.map(control::format_bytes)),
            control::or_dash(worker.cpu_percent.map(|cpu| format!("{cpu:.1}%"))),
        ]);
    }
    out.push_str(&control::table(&rows));
    out
}
