//! `forkline status NAME [--json]`: one row per worker slot (slot, pid, state, uptime,
//! restarts, connections in flight and served, RSS, CPU%), or the cluster's status object as
//! JSON.

use clap::Args;
use serde_json::{json, Value};

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
    let mut reply = target.call(json!({"cmd": "status"}), Some(control::QUICK))?;
    if args.json {
        if let Some(object) = reply.as_object_mut() {
            object.remove("ok");
        }
        control::print(&format!("{reply}\n"));
        return Ok(0);
    }
    control::print(&render(&target.name, &reply));
    Ok(0)
}

/// The status as a header line and a table.
fn render(name: &str, status: &Value) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let name = status["name"].as_str().unwrap_or(name);
    let addresses: Vec<String> = status["addresses"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    let mut out = format!(
        "{name}: primary pid {}, {} mode{}, {}/{} workers ready, up {}{}\n",
        text(&status["pid"]),
        match status["steering"].as_str() {
            // Steer mode says how: "steer (bpf-round-robin) mode".
            Some(how) => format!("{} ({how})", text(&status["mode"])),
            None => text(&status["mode"]),
        },
        match status["reuseport_migration"].as_str() {
            Some("off") => " (queues of closing workers are reset)".to_string(),
            Some(how) => format!(" (queues migrate: {how})"),
            None => String::new(),
        },
        text(&status["ready"]),
        text(&status["target"]),
        control::format_uptime(status["uptime_secs"].as_f64().unwrap_or(0.0)),
        if addresses.is_empty() {
            String::new()
        } else {
            format!(", on {}", addresses.join(", "))
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
    let counted = matches!(status["mode"].as_str(), Some("round-robin" | "proxy"));
    let count = |v: &Value| if counted { text(v) } else { "-".into() };
    for worker in status["workers"].as_array().into_iter().flatten() {
        let mut state = text(&worker["state"]);
        if worker["gave_up"] == json!(true) {
            state = "gave-up".into();
        } else if worker["crash_loop"] == json!(true) {
            state.push_str(" (crash loop)");
        }
        if let Some(pid) = worker["replacement_pid"].as_u64() {
            state.push_str(&format!(" (replacing: {pid})"));
        }
        rows.push(vec![
            text(&worker["slot"]),
            text(&worker["pid"]),
            state,
            worker["uptime_secs"]
                .as_f64()
                .map(control::format_uptime)
                .unwrap_or_else(|| "-".into()),
            text(&worker["restarts"]),
            count(&worker["connections_in_flight"]),
            count(&worker["connections_served"]),
            worker["rss_bytes"]
                .as_u64()
                .map(control::format_bytes)
                .unwrap_or_else(|| "-".into()),
            worker["cpu_percent"]
                .as_f64()
                .map(|cpu| format!("{cpu:.1}%"))
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    out.push_str(&control::table(&rows));
    out
}
