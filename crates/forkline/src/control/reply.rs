//! What the primary answers: the reply envelope ([`Reply`]: `ok`, and either the answer's
//! fields or a [`Failure`]) and the answers that are not a status ([`Done`], [`Scaled`],
//! [`Upgraded`]).

use std::fmt;

use serde::de::{DeserializeOwned, Error as _};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// One reply line: `{"ok":true, ...}` with the answer's fields beside `ok` when the request was
/// carried out, or `{"ok":false,"error":"...", ...}` ([`Failure`]) when it was not. `T` is the
/// answer of the request (see [`Request`](super::Request)).
///
/// Like a `Result`, a reply is one or the other; `ok` admits no third case.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<T> {
    /// `ok` is true: the request was carried out, and this is the answer.
    Ok(T),
    /// `ok` is false: why not.
    Failed(Failure),
}

impl<T> Reply<T> {
    /// The answer, or the failure.
    pub fn into_result(self) -> Result<T, Failure> {
        match self {
            Reply::Ok(answer) => Ok(answer),
            Reply::Failed(failure) => Err(failure),
        }
    }

    /// True when the request was carried out (`ok` is true).
    pub fn is_ok(&self) -> bool {
        matches!(self, Reply::Ok(_))
    }
}

impl<T> From<Result<T, Failure>> for Reply<T> {
    fn from(result: Result<T, Failure>) -> Reply<T> {
        match result {
            Ok(answer) => Reply::Ok(answer),
            Err(failure) => Reply::Failed(failure),
        }
    }
}

/// `ok` first, then the fields of the answer or of the failure.
#[derive(Serialize)]
struct Envelope<'a, B> {
    ok: bool,
    #[serde(flatten)]
    body: &'a B,
}

impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Reply::Ok(answer) => Envelope {
                ok: true,
                body: answer,
            }
            .serialize(serializer),
            Reply::Failed(failure) => Envelope {
                ok: false,
                body: failure,
            }
            .serialize(serializer),
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Reply<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut value = Value::deserialize(deserializer)?;
        let Some(object) = value.as_object_mut() else {
            return Err(D::Error::custom("a reply must be a JSON object"));
        };
        match object.remove("ok") {
            Some(Value::Bool(true)) => T::deserialize(value)
                .map(Reply::Ok)
                .map_err(D::Error::custom),
            Some(Value::Bool(false)) => Failure::deserialize(value)
                .map(Reply::Failed)
                .map_err(D::Error::custom),
            Some(other) => Err(D::Error::custom(format!(
                "`ok` must be true or false, not {other}"
            ))),
            None => Err(D::Error::missing_field("ok")),
        }
    }
}

/// Why a request was not carried out: `{"ok":false,"error":"...","slot":N}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Failure {
    /// What went wrong, in one line.
    pub error: String,
    /// The slot whose new worker failed, when a replacement (reload, restart) did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<usize>,
}

impl Failure {
    /// A failure saying `error`.
    pub fn new(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            slot: None,
        }
    }

    /// A failed replacement of the worker in `slot`, saying `error`.
    pub fn at_slot(slot: usize, error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            slot: Some(slot),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error)
    }
}

impl std::error::Error for Failure {}

/// The answer with nothing to say but `ok` (`{"ok":true}`): to `reload` and `restart` once
/// done, and to `stop` before stopping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Done {}

/// The answer to `scale`: `{"ok":true,"workers":N}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Scaled {
    /// The number of workers the cluster keeps now.
    pub workers: usize,
}

impl Scaled {
    /// Scaled to `workers`.
    pub fn new(workers: usize) -> Scaled {
        Scaled { workers }
    }
}

/// The answer to `send`: `{"ok":true,"workers":N}`, the workers it was queued for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Sent {
    /// How many workers the message was queued for.
    pub workers: usize,
}

impl Sent {
    /// Queued for `workers` workers.
    pub fn new(workers: usize) -> Sent {
        Sent { workers }
    }
}

/// The answer to `upgrade`, once a new primary took over: `{"ok":true,"pid":NEW}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Upgraded {
    /// The new primary's pid.
    pub pid: u32,
}

impl Upgraded {
    /// The new primary is `pid`.
    pub fn new(pid: u32) -> Upgraded {
        Upgraded { pid }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write<T: Serialize>(reply: &Reply<T>) -> String {
        serde_json::to_string(reply).unwrap()
    }

    fn read<T: DeserializeOwned>(line: &str) -> serde_json::Result<Reply<T>> {
        serde_json::from_str(line)
    }

    #[test]
    fn replies_are_written_as_the_primary_writes_them() {
        assert_eq!(write(&Reply::Ok(Done::default())), r#"{"ok":true}"#);
        assert_eq!(
            write(&Reply::Ok(Scaled::new(3))),
            r#"{"ok":true,"workers":3}"#
        );
        assert_eq!(
            write(&Reply::Ok(Upgraded::new(4242))),
            r#"{"ok":true,"pid":4242}"#
        );
        assert_eq!(
            write(&Reply::<Done>::Failed(Failure::new("no worker in slot 9"))),
            r#"{"ok":false,"error":"no worker in slot 9"}"#
        );
        assert_eq!(
            write(&Reply::<Done>::Failed(Failure::at_slot(
                1,
                "slot 1: the new worker exited with code 1"
            ))),
            r#"{"ok":false,"error":"slot 1: the new worker exited with code 1","slot":1}"#
        );
    }

    #[test]
    fn replies_round_trip() {
        fn check<T: Serialize + DeserializeOwned + PartialEq + fmt::Debug>(reply: Reply<T>) {
            let line = write(&reply);
            assert_eq!(read::<T>(&line).unwrap(), reply, "{line}");
        }
        check(Reply::Ok(Done::default()));
        check(Reply::Ok(Scaled::new(7)));
        check(Reply::Ok(Upgraded::new(1)));
        check(Reply::<Scaled>::Failed(Failure::new("cannot scale to 0")));
        check(Reply::<Done>::Failed(Failure::at_slot(2, "slot 2: no")));
    }

    #[test]
    fn todays_reply_lines_parse() {
        // As the primary writes them (keys sorted), and with fields a client does not know.
        let scaled: Reply<Scaled> = read(r#"{"ok":true,"workers":3}"#).unwrap();
        assert_eq!(scaled, Reply::Ok(Scaled::new(3)));
        let failed: Reply<Done> =
            read(r#"{"error":"slot 0: the new worker exited with code 1","ok":false,"slot":0}"#)
                .unwrap();
        assert_eq!(
            failed.into_result().unwrap_err(),
            Failure::at_slot(0, "slot 0: the new worker exited with code 1")
        );
        let denied: Reply<Upgraded> =
            read(r#"{"ok":false,"error":"permission denied: not the cluster's user"}"#).unwrap();
        assert!(!denied.is_ok());
        assert_eq!(
            denied.into_result().unwrap_err().to_string(),
            "permission denied: not the cluster's user"
        );
        let done: Reply<Done> = read(r#"{"ok":true,"extra":1}"#).unwrap();
        assert!(done.is_ok());
        let upgraded: Reply<Upgraded> = read(r#"{"ok":true,"pid":99}"#).unwrap();
        assert_eq!(upgraded.into_result().unwrap().pid, 99);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let error = |line: &str| read::<Scaled>(line).unwrap_err().to_string();
        assert!(error(r#"{"workers":3}"#).contains("missing field `ok`"));
        assert!(error(r#"{"ok":true}"#).contains("missing field `workers`"));
        assert!(error(r#"{"ok":"yes"}"#).contains("`ok` must be true or false"));
        assert!(error(r#"{"ok":false}"#).contains("missing field `error`"));
        assert!(error("[1]").contains("JSON object"));
        assert!(error(r#"{"ok":true,"workers":"many"}"#).contains("invalid type"));
    }
}
