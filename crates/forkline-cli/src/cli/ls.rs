//! `forkline ls`: every live cluster of this user (name, primary pid, workers ready/total,
//! uptime, mode, addresses), found by the control sockets in the socket directory; stale
//! socket files are skipped.

use clap::Args;

use crate::control;
use crate::error::CliError;

/// Arguments of `forkline ls`.
#[derive(Debug, Args)]
pub struct LsArgs {}

/// Runs `ls`.
pub fn ls(_args: LsArgs) -> Result<i32, CliError> {
    let dir = control::default_dir();
    let live = control::live_clusters(&dir);
    if live.is_empty() {
        control::print(&format!("no cluster is running (in {})\n", dir.display()));
        return Ok(0);
    }
    let mut rows = vec![["NAME", "PID", "READY", "UPTIME", "MODE", "ADDRESSES"]
        .map(String::from)
        .to_vec()];
    for cluster in &live {
        let s = &cluster.status;
        rows.push(vec![
            cluster.name.clone(),
            s.pid.to_string(),
            format!("{}/{}", s.ready, s.target),
            control::format_uptime(s.uptime_secs),
            s.mode.as_str().to_string(),
            if s.addresses.is_empty() {
                "-".into()
            } else {
                s.addresses.join(",")
            },
        ]);
    }
    control::print(&control::table(&rows));
    Ok(0)
}
