//! The wire names of two library enums the control protocol carries, [`WorkerState`] (a slot's
//! `state`) and [`OutputStream`] (a log line's `stream`): their `Deserialize` (they derive only
//! `Serialize` where they are declared) and their `Display`, both by the same lowercase names
//! that `Serialize` writes. These impls belong beside the types; they live here until the types
//! derive `Deserialize` themselves.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};

use crate::primary::{OutputStream, WorkerState};

/// Every worker state.
const STATES: [WorkerState; 5] = [
    WorkerState::Starting,
    WorkerState::Online,
    WorkerState::Ready,
    WorkerState::Draining,
    WorkerState::Exited,
];

/// The names of [`STATES`], in their order (for error messages).
const STATE_NAMES: &[&str] = &["starting", "online", "ready", "draining", "exited"];

/// The name of `state`, as `Serialize` writes it.
fn state_name(state: WorkerState) -> &'static str {
    match state {
        WorkerState::Starting => "starting",
        WorkerState::Online => "online",
        WorkerState::Ready => "ready",
        WorkerState::Draining => "draining",
        WorkerState::Exited => "exited",
    }
}

/// Both streams.
const STREAMS: [OutputStream; 2] = [OutputStream::Stdout, OutputStream::Stderr];

/// The names of [`STREAMS`], in their order (for error messages).
const STREAM_NAMES: &[&str] = &["stdout", "stderr"];

/// The name of `stream`, as `Serialize` writes it.
fn stream_name(stream: OutputStream) -> &'static str {
    match stream {
        OutputStream::Stdout => "stdout",
        OutputStream::Stderr => "stderr",
    }
}

/// The value of `all` whose `name` is the string `deserializer` holds.
fn named<'de, D: Deserializer<'de>, T: Copy>(
    deserializer: D,
    all: &[T],
    name: fn(T) -> &'static str,
    names: &'static [&'static str],
) -> Result<T, D::Error> {
    let wanted = String::deserialize(deserializer)?;
    all.iter()
        .copied()
        .find(|value| name(*value) == wanted)
        .ok_or_else(|| D::Error::unknown_variant(&wanted, names))
}

impl fmt::Display for WorkerState {
    /// `starting`, `online`, `ready`, `draining`, `exited`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(state_name(*self))
    }
}

impl<'de> Deserialize<'de> for WorkerState {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        named(deserializer, &STATES, state_name, STATE_NAMES)
    }
}

impl fmt::Display for OutputStream {
    /// `stdout` or `stderr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(stream_name(*self))
    }
}

impl<'de> Deserialize<'de> for OutputStream {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        named(deserializer, &STREAMS, stream_name, STREAM_NAMES)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_those_serialize_writes_and_read_back() {
        for state in STATES {
            let name = state_name(state);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(
                serde_json::from_value::<WorkerState>(name.into()).unwrap(),
                state
            );
        }
        assert_eq!(STATE_NAMES, STATES.map(state_name).as_slice());
        for stream in STREAMS {
            let name = stream_name(stream);
            assert_eq!(serde_json::to_value(stream).unwrap(), name);
            assert_eq!(stream.to_string(), name);
            assert_eq!(
                serde_json::from_value::<OutputStream>(name.into()).unwrap(),
                stream
            );
        }
        assert_eq!(STREAM_NAMES, STREAMS.map(stream_name).as_slice());
        let error = serde_json::from_str::<WorkerState>(r#""Ready""#).unwrap_err();
        assert!(
            error.to_string().contains("unknown variant `Ready`"),
            "{error}"
        );
        assert!(serde_json::from_str::<OutputStream>(r#""stdin""#).is_err());
        assert!(serde_json::from_str::<WorkerState>("2").is_err());
    }
}
