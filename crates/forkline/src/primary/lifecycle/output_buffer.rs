//! The recent worker output the primary keeps for `forkline logs`: a ring of the last lines
//! every worker wrote (bounded in bytes, oldest dropped first), and a broadcast of each new
//! line for followers. Only output the primary copies (`WorkerStdio::Prefixed` or `Captured`)
//! is kept, and the messages workers send on their channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde::{Serialize, Serializer};
use tokio::sync::broadcast;

/// Default size of the buffer: the last 256 KiB of worker output.
pub const DEFAULT_OUTPUT_BUFFER: usize = 256 * 1024;

/// New lines a follower may fall behind by before it is told it missed some.
const FOLLOW_BACKLOG: usize = 1024;

/// Which of a worker's streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum OutputStream {
    /// Its stdout.
    Stdout,
    /// Its stderr.
    Stderr,
    /// A message it sent the primary on its channel (Node's `process.send`, the library's
    /// `Worker::send`), as one line of JSON.
    Message,
}

impl std::fmt::Display for OutputStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
            OutputStream::Message => "message",
        })
    }
}

/// One line a worker wrote.
#[derive(Debug, Clone, Serialize)]
pub struct OutputLine {
    /// When the primary read it.
    #[serde(serialize_with = "rfc3339")]
    pub time: SystemTime,
    /// The worker's slot.
    pub slot: usize,
    /// The worker's pid.
    pub pid: u32,
    /// The stream it came from.
    pub stream: OutputStream,
    /// The line, without its newline (invalid UTF-8 replaced).
    pub line: String,
}

fn rfc3339<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_micros(*time))
}

/// The ring of recent lines and the channel that announces new ones.
pub(crate) struct OutputBuffer {
    capacity: usize,
    ring: Mutex<Ring>,
    follow: broadcast::Sender<Arc<OutputLine>>,
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<Arc<OutputLine>>,
    bytes: usize,
}

impl OutputBuffer {
    /// A buffer keeping at most `capacity` bytes of lines (0 keeps none).
    pub(crate) fn new(capacity: usize) -> OutputBuffer {
        OutputBuffer {
            capacity,
            ring: Mutex::new(Ring::default()),
            follow: broadcast::channel(FOLLOW_BACKLOG).0,
        }
    }

    /// Keeps a line of `worker`'s written now on `stream` (what the primary says for it: a
    /// message it sent, forensics).
    pub(crate) fn push_for(
        &self,
        worker: &crate::primary::handle::WorkerHandle,
        stream: OutputStream,
        line: String,
    ) {
        self.push(OutputLine {
            time: SystemTime::now(),
            slot: worker.id(),
            pid: worker.pid(),
            stream,
            line,
        });
    }

    /// Keeps `line`, dropping the oldest lines past the capacity, and announces it.
    pub(crate) fn push(&self, line: OutputLine) {
        if self.capacity == 0 {
            return;
        }
        let line = Arc::new(line);
        let mut ring = self.ring();
        ring.bytes += line.line.len();
        ring.lines.push_back(line.clone());
        while ring.bytes > self.capacity {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.line.len();
        }
        // Sent under the lock, so `recent_and_follow` neither misses nor repeats a line.
        let _ = self.follow.send(line);
    }

    /// The last `max` lines (of `slot` only, if given), oldest first, and a receiver of every
    /// line pushed after them.
    pub(crate) fn recent_and_follow(
        &self,
        max: usize,
        slot: Option<usize>,
    ) -> (Vec<Arc<OutputLine>>, broadcast::Receiver<Arc<OutputLine>>) {
        let ring = self.ring();
        let mut recent: Vec<_> = ring
            .lines
            .iter()
            .rev()
            .filter(|l| slot.is_none_or(|s| l.slot == s))
            .take(max)
            .cloned()
            .collect();
        recent.reverse();
        (recent, self.follow.subscribe())
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(slot: usize, text: &str) -> OutputLine {
        OutputLine {
            time: SystemTime::UNIX_EPOCH,
            slot,
            pid: 100 + slot as u32,
            stream: OutputStream::Stdout,
            line: text.into(),
        }
    }

    fn texts(lines: &[Arc<OutputLine>]) -> Vec<&str> {
        lines.iter().map(|l| l.line.as_str()).collect()
    }

    #[test]
    fn keeps_the_newest_lines_within_its_capacity() {
        let buffer = OutputBuffer::new(10);
        for text in ["aaaa", "bbbb", "cccc", "dd"] {
            buffer.push(line(0, text));
        }
        let (recent, _) = buffer.recent_and_follow(100, None);
        assert_eq!(texts(&recent), ["bbbb", "cccc", "dd"]);
        let (last, _) = buffer.recent_and_follow(2, None);
        assert_eq!(texts(&last), ["cccc", "dd"]);
    }

    #[test]
    fn filters_by_slot_and_follows_what_comes_after() {
        let buffer = OutputBuffer::new(1000);
        buffer.push(line(0, "zero"));
        buffer.push(line(1, "one"));
        let (recent, mut follow) = buffer.recent_and_follow(10, Some(1));
        assert_eq!(texts(&recent), ["one"]);
        buffer.push(line(0, "later"));
        assert_eq!(follow.try_recv().unwrap().line, "later");
        assert!(follow.try_recv().is_err());
    }

    #[test]
    fn a_zero_capacity_keeps_nothing() {
        let buffer = OutputBuffer::new(0);
        buffer.push(line(0, "x"));
        assert!(buffer.recent_and_follow(10, None).0.is_empty());
    }

    #[test]
    fn serializes_with_an_rfc3339_time() {
        let json = serde_json::to_value(line(2, "hi")).unwrap();
        assert_eq!(json["time"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(json["stream"], "stdout");
        assert_eq!(json["slot"], 2);
    }
}
