//! `forkline logs NAME [-f]`: the recent lines of each worker's output, from the primary's
//! output buffer, then (with `--follow`) every new line until interrupted or the cluster stops.

use std::io::{BufRead, BufReader, Write};

use clap::Args;
use forkline::control::{LogsReply, Request};
use forkline::OutputStream;

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
    let broken = |e: std::io::Error| target.broken(e);
    // A quiet cluster being followed may send nothing for hours: no read timeout then.
    let timeout = (!args.follow).then_some(control::QUICK);
    stream.set_read_timeout(timeout).map_err(broken)?;
    let request = Request::Logs {
        lines: Some(args.lines),
        follow: args.follow,
        slot: args.slot,
    };
    stream
        .write_all(control::request_line(request).map_err(broken)?.as_bytes())
        .map_err(broken)?;
    let name = target.name.clone();
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(&stream).lines() {
        let line = line.map_err(broken)?;
        let reply: LogsReply = control::parse_reply(&line).map_err(broken)?;
        let text = match reply {
            LogsReply::End => return Ok(0),
            LogsReply::Failed(failure) => {
                return Err(CliError::Runtime(format!("{name}: {failure}")))
            }
            // The line as the primary sent it.
            _ if args.json => line,
            reply => match render(&name, &reply) {
                Some(text) => text,
                None => continue,
            },
        };
        // Nobody reads any more (`| head`): stop quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(0);
        }
    }
    // The primary went away mid-stream: the cluster stopped.
    Ok(0)
}

/// `TIME [NAME:SLOT PID] LINE`, or a note for lines a slow follower missed; `None` for a reply
/// that is neither.
fn render(name: &str, reply: &LogsReply) -> Option<String> {
    match reply {
        LogsReply::Skipped(skipped) => Some(format!(
            "... {skipped} lines skipped (this reader fell behind)"
        )),
        LogsReply::Line(line) => Some(format!(
            "{} [{name}:{} {}] {}{}",
            humantime::format_rfc3339_micros(line.time),
            line.slot,
            line.pid,
            if line.stream == OutputStream::Message {
                "message: "
            } else {
                ""
            },
            line.line
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_a_line_with_who_wrote_it() {
        let reply: LogsReply = serde_json::from_str(
            r#"{"time": "2026-11-30T06:00:00.000001Z", "slot": 1, "pid": 42,
                "stream": "stdout", "line": "hello"}"#,
        )
        .unwrap();
        assert_eq!(
            render("web", &reply).unwrap(),
            "2026-11-30T06:00:00.000001Z [web:1 42] hello"
        );
        assert!(render("web", &LogsReply::Skipped(3))
            .unwrap()
            .contains("3 lines skipped"));
        assert_eq!(render("web", &LogsReply::End), None);
    }
}
