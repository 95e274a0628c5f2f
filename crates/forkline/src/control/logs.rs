//! The answer to `logs`, a stream of lines: each a [`LogsReply`], most of them a [`LogLine`]
//! (one line a worker wrote).

use std::time::SystemTime;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use super::reply::{Done, Failure, Reply};
use crate::primary::OutputStream;

/// One line a worker wrote, as a `logs` stream carries it:
/// `{"time":"2026-11-30T06:20:00.123456Z","slot":0,"pid":4242,"stream":"stdout","line":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct LogLine {
    /// When the primary read it; on the wire in RFC 3339, UTC, to the microsecond.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// The worker's slot.
    pub slot: usize,
    /// The worker's pid.
    pub pid: u32,
    /// The stream it came from.
    pub stream: OutputStream,
    /// The line, without its newline.
    pub line: String,
}

impl LogLine {
    /// `line`, written to `stream` by the worker `pid` of `slot`, read at `time`.
    pub fn new(
        time: SystemTime,
        slot: usize,
        pid: u32,
        stream: OutputStream,
        line: impl Into<String>,
    ) -> LogLine {
        LogLine {
            time,
            slot,
            pid,
            stream,
            line: line.into(),
        }
    }
}

/// `SystemTime` as RFC 3339 text to the microsecond (`2026-11-30T06:20:00.123456Z`).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_rfc3339_micros(*time))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339(&text)
            .map_err(|e| D::Error::custom(format!("bad time `{text}`: {e}")))
    }
}

/// One line of a `logs` stream: a line of output, a note that lines were missed, the end of
/// the stream, or a refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LogsReply {
    /// A line a worker wrote.
    Line(LogLine),
    /// `{"skipped":N}`: a follower fell too far behind and missed N lines.
    Skipped(u64),
    /// `{"ok":true,"end":true}`: the stream is over (no `follow`, or the cluster stopped).
    End,
    /// `{"ok":false,"error":"..."}`: the request was refused.
    Failed(Failure),
}

/// The fields of the end of a stream beside `ok`.
#[derive(Serialize)]
struct End {
    end: bool,
}

/// The note of missed lines.
#[derive(Serialize, Deserialize)]
struct Skipped {
    skipped: u64,
}

impl Serialize for LogsReply {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            LogsReply::Line(line) => line.serialize(serializer),
            LogsReply::Skipped(skipped) => Skipped { skipped: *skipped }.serialize(serializer),
            LogsReply::End => Reply::Ok(End { end: true }).serialize(serializer),
            LogsReply::Failed(failure) => {
                Reply::<Done>::Failed(failure.clone()).serialize(serializer)
            }
        }
    }
}

impl<'de> Deserialize<'de> for LogsReply {
    /// By its keys: `ok` makes it the end (or a refusal), `skipped` a note, anything else a
    /// line.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        let Some(object) = value.as_object() else {
            return Err(D::Error::custom("a reply must be a JSON object"));
        };
        let reply = if object.contains_key("ok") {
            Reply::<Done>::deserialize(value).map(|reply| match reply {
                Reply::Ok(_) => LogsReply::End,
                Reply::Failed(failure) => LogsReply::Failed(failure),
            })
        } else if object.contains_key("skipped") {
            Skipped::deserialize(value).map(|s| LogsReply::Skipped(s.skipped))
        } else {
            LogLine::deserialize(value).map(LogsReply::Line)
        };
        reply.map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Lines of `forkline logs --json` of a real cluster, as the primary sent them (keys
    /// sorted).
    const CAPTURED: &str = include_str!("testdata/logs.jsonl");

    /// The other kinds of line, as the primary writes them.
    const OTHERS: [&str; 3] = [
        r#"{"skipped":17}"#,
        r#"{"end":true,"ok":true}"#,
        r#"{"error":"bad request: expected value at line 1 column 1","ok":false}"#,
    ];

    fn read(line: &str) -> serde_json::Result<LogsReply> {
        serde_json::from_str(line)
    }

    /// `reply` as a `Value` prints it: keys sorted, as the primary writes its lines.
    fn sorted(reply: &LogsReply) -> String {
        serde_json::to_value(reply).unwrap().to_string()
    }

    #[test]
    fn captured_lines_read_and_write_back_the_same() {
        for line in CAPTURED.lines().chain(OTHERS) {
            let reply = read(line).unwrap();
            assert_eq!(sorted(&reply), line);
        }
        let LogsReply::Line(first) = read(CAPTURED.lines().next().unwrap()).unwrap() else {
            panic!("a line");
        };
        assert_eq!(first.slot, 1);
        assert_eq!(first.pid, 8277);
        assert_eq!(first.stream, OutputStream::Stdout);
        assert_eq!(first.line, "started 8277");
        assert_eq!(
            humantime::format_rfc3339_micros(first.time).to_string(),
            "2026-12-07T22:48:27.514531Z"
        );
        assert_eq!(read(OTHERS[0]).unwrap(), LogsReply::Skipped(17));
        assert_eq!(read(OTHERS[1]).unwrap(), LogsReply::End);
        assert!(matches!(read(OTHERS[2]).unwrap(), LogsReply::Failed(f) if f.slot.is_none()));
    }

    #[test]
    fn what_the_primary_serializes_reads_as_a_line() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_micros(1_790_000_000_000_001);
        let output = crate::OutputLine {
            time,
            slot: 2,
            pid: 77,
            stream: OutputStream::Stderr,
            line: "oops".into(),
        };
        // As the primary sends it: through a `Value`.
        let sent = serde_json::to_value(&output).unwrap().to_string();
        let reply = read(&sent).unwrap();
        assert_eq!(
            reply,
            LogsReply::Line(LogLine::new(time, 2, 77, OutputStream::Stderr, "oops"))
        );
        assert_eq!(sorted(&reply), sent);
    }

    #[test]
    fn every_kind_round_trips() {
        let time = SystemTime::UNIX_EPOCH + Duration::from_micros(1_790_000_000_123_456);
        for reply in [
            LogsReply::Line(LogLine::new(time, 3, 99, OutputStream::Stderr, "boom")),
            LogsReply::Skipped(0),
            LogsReply::End,
            LogsReply::Failed(Failure::new("bad request: expected value")),
        ] {
            let line = serde_json::to_string(&reply).unwrap();
            assert_eq!(read(&line).unwrap(), reply, "{line}");
        }
        assert_eq!(
            serde_json::to_string(&LogsReply::Failed(Failure::new("no"))).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(
            read(r#"{"time":"yesterday","slot":0,"pid":1,"stream":"stdout","line":""}"#)
                .unwrap_err()
                .to_string()
                .contains("bad time `yesterday`")
        );
        assert!(read(r#"{"slot":0}"#).is_err());
        assert!(read(r#"{"skipped":"some"}"#).is_err());
        assert!(read(r#"{"ok":false}"#).is_err());
        assert!(read("3").is_err());
    }
}
