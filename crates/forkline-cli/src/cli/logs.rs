//! `forkline logs NAME [-f]`: the recent lines of each worker's output, from the primary's
//! output buffer, then (with `--follow`) every new line until interrupted or the cluster stops.

use std::io::{BufRead, BufReader, ErrorKind, Write};

use clap::Args;
use serde_json::{json, Value};

use super::cluster_args::ClusterArgs;
use crate::control;
use crate::error::CliError;

/// Arguments of `forkline logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Keep printing new lines as workers write them
    #[arg(short, long)]
    pub follow: bool,

    /// How many recent lines to print first
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
    pub lines: usize,

    /// Only this slot's worker
    #[arg(long, value_name = "SLOT")]
    pub slot: Option<usize>,

    /// Print each line as the JSON object the primary sends
    #[arg(long)]
    pub json: bool,

    /// Which cluster: NAME, or --control PATH.
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

/// Runs `logs`.
pub fn logs(args: LogsArgs) -> Result<i32, CliError> {
    let target = args.cluster.target()?;
    let mut stream = target.connect()?;
    let broken = |e: std::io::Error| {
        CliError::Runtime(format!(
            "{}: control socket {}: {e}",
            target.name,
            target.path.display()
        ))
    };
    // A quiet cluster being followed may send nothing for hours: no read timeout then.
    let timeout = (!args.follow).then_some(control::QUICK);
    stream.set_read_timeout(timeout).map_err(broken)?;
    let request = json!({"v": 1, "cmd": "logs", "lines": args.lines, "follow": args.follow,
                         "slot": args.slot});
    stream
        .write_all(format!("{request}\n").as_bytes())
        .map_err(broken)?;
    let name = target.name.clone();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(broken)?;
        let reply: Value = serde_json::from_str(&line)
            .map_err(|e| broken(std::io::Error::new(ErrorKind::InvalidData, e)))?;
        if reply["end"] == json!(true) {
            return Ok(0);
        }
        if reply["ok"] == json!(false) {
            let error = reply["error"].as_str().unwrap_or("the cluster refused");
            return Err(CliError::Runtime(format!("{name}: {error}")));
        }
        let text = if args.json {
            line
        } else {
            render(&name, &reply)
        };
        // Nobody reads any more (`| head`): stop quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    // The primary went away mid-stream: the cluster stopped.
    Ok(0)
}

/// `TIME [NAME:SLOT PID] LINE`, or a note for lines a slow follower missed.
fn render(name: &str, reply: &Value) -> String {
    if let Some(skipped) = reply["skipped"].as_u64() {
        return format!("... {skipped} lines skipped (this reader fell behind)");
    }
    format!(
        "{} [{name}:{} {}] {}",
        reply["time"].as_str().unwrap_or("-"),
        reply["slot"],
        reply["pid"],
        reply["line"].as_str().unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_line_with_who_wrote_it() {
        let reply = json!({"time": "2026-11-30T06:00:00.000001Z", "slot": 1, "pid": 42,
                           "stream": "stdout", "line": "hello"});
        assert_eq!(
            render("web", &reply),
            "2026-11-30T06:00:00.000001Z [web:1 42] hello"
        );
        assert!(render("web", &json!({"skipped": 3})).contains("3 lines skipped"));
    }
}
