//! `forkline ls`: every live cluster of this user (name, primary pid, workers ready/total,
//! uptime, mode, addresses), found by the control sockets in the socket directory; stale
//! socket files are skipped.

use clap::Args;
use serde_json::Value;

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
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut rows = vec![["NAME", "PID", "READY", "UPTIME", "MODE", "ADDRESSES"]
        .map(String::from)
        .to_vec()];
    for cluster in &live {
        let s = &cluster.status;
        let addresses: Vec<String> = s["addresses"]
            .as_array()
            .map(|a| a.iter().map(text).collect())
            .unwrap_or_default();
        rows.push(vec![
            cluster.name.clone(),
            text(&s["pid"]),
            format!("{}/{}", text(&s["ready"]), text(&s["target"])),
            control::format_uptime(s["uptime_secs"].as_f64().unwrap_or(0.0)),
            text(&s["mode"]),
            if addresses.is_empty() {
                "-".into()
            } else {
                addresses.join(",")
            },
        ]);
    }
    control::print(&control::table(&rows));
    Ok(0)
}
