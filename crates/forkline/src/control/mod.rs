//! The control protocol's wire types (`docs/CONTROL.md`): everything a client and a primary say
//! to each other on a cluster's control socket, one JSON object per line each way. This module
//! owns the protocol version ([`CONTROL_VERSION`]), the requests ([`Request`], sent as a
//! [`RequestLine`]), the reply envelope ([`Reply`], [`Failure`]) and each request's answer
//! ([`Status`] with one [`SlotStatus`] per slot and its [`LastExit`], [`Scaled`], [`Upgraded`],
//! [`Done`]), and the
//! lines of a `logs` stream ([`LogsReply`], [`LogLine`]).
//!
//! The types serialize to exactly the JSON the protocol puts on the wire, and deserialize from
//! it; they carry the data and nothing else, so that the primary's server and any client (the
//! `forkline` CLI) read and write the protocol through them alone.
//!
//! ```
//! use forkline::control::{Reply, Request, RequestLine, Scaled};
//!
//! let line = serde_json::to_string(&RequestLine::new(Request::Status)).unwrap();
//! assert_eq!(line, r#"{"v":1,"cmd":"status"}"#);
//!
//! let reply: Reply<Scaled> = serde_json::from_str(r#"{"ok":true,"workers":3}"#).unwrap();
//! assert_eq!(reply.into_result().unwrap().workers, 3);
//! ```

mod exit;
mod logs;
mod reply;
mod request;
mod status;

pub use exit::{ExitReason, LastExit};
pub use logs::{LogLine, LogsReply};
pub use reply::{Done, Failure, Reply, Scaled, Sent, Upgraded};
pub use request::{Request, RequestLine};
pub use status::{MigrationStatus, SlotStatus, Status, Steering};

/// The version of the control protocol: every request line carries it as `v`, and a primary
/// refuses a version it does not speak.
pub const CONTROL_VERSION: u32 = 1;
