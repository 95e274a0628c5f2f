//! What a client asks: [`Request`], and the line it is sent as, [`RequestLine`] (the request
//! with the protocol version).

use serde::{Deserialize, Serialize};

use super::CONTROL_VERSION;

/// A request on the control socket, tagged by `cmd` (`{"cmd":"scale","delta":1}`). Each is
/// answered by one [`Reply`](super::Reply) line, whose answer type is named below, except
/// `logs`, which is answered by a stream of [`LogsReply`](super::LogsReply) lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Request {
    /// The cluster and every slot; answered with a [`Status`](super::Status).
    Status,
    /// A rolling reload; answered with [`Done`](super::Done) when it has finished, or a
    /// [`Failure`](super::Failure) naming the slot whose new worker failed.
    Reload,
    /// A new number of workers: `workers`, or the current number plus `delta`; answered with
    /// [`Scaled`](super::Scaled).
    Scale {
        /// The new number of workers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<usize>,
        /// Workers to add (or remove, when negative).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        delta: Option<i64>,
    },
    /// Replace one slot's worker (start a new one, then stop the old one); answered with
    /// [`Done`](super::Done) when it has been replaced.
    Restart {
        /// The slot.
        slot: usize,
    },
    /// Recent worker output: up to `lines` lines (100 when not given), then, with `follow`,
    /// every new line until the client hangs up; answered with [`LogsReply`](super::LogsReply)
    /// lines. It ends the connection.
    Logs {
        /// How many recent lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lines: Option<usize>,
        /// Keep sending new lines.
        #[serde(default)]
        follow: bool,
        /// Only this slot's lines.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<usize>,
    },
    /// A message for the workers' `process.on('message')` (Node) or `Worker::messages`
    /// (forkline library): to the worker of `slot`, or without one to every connected worker.
    Send {
        /// The slot whose worker gets it; every worker when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        slot: Option<usize>,
        /// The message, any JSON value.
        message: serde_json::Value,
    },
    /// Replace the primary itself: start the program again as a new primary, which takes over
    /// once its workers are ready; answered with [`Upgraded`](super::Upgraded) when it has.
    Upgrade,
    /// Stop the cluster gracefully (or at once with `now`); answered with
    /// [`Done`](super::Done) before it stops.
    Stop {
        /// SIGKILL the workers instead of asking them to finish.
        #[serde(default)]
        now: bool,
    },
}

/// A request line: the protocol version `v` and the request, in one object
/// (`{"v":1,"cmd":"status"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RequestLine {
    /// The protocol version the client speaks.
    pub v: u32,
    /// The request.
    #[serde(flatten)]
    pub request: Request,
}

impl RequestLine {
    /// `request` in this build's protocol version, [`CONTROL_VERSION`].
    pub fn new(request: Request) -> RequestLine {
        RequestLine {
            v: CONTROL_VERSION,
            request,
        }
    }
}

impl From<Request> for RequestLine {
    fn from(request: Request) -> RequestLine {
        RequestLine::new(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(request: Request) -> String {
        serde_json::to_string(&RequestLine::new(request)).unwrap()
    }

    fn parse(line: &str) -> serde_json::Result<RequestLine> {
        serde_json::from_str(line)
    }

    #[test]
    fn requests_are_written_as_the_protocol_says() {
        assert_eq!(line(Request::Status), r#"{"v":1,"cmd":"status"}"#);
        assert_eq!(line(Request::Reload), r#"{"v":1,"cmd":"reload"}"#);
        assert_eq!(line(Request::Upgrade), r#"{"v":1,"cmd":"upgrade"}"#);
        assert_eq!(
            line(Request::Scale {
                workers: None,
                delta: Some(-1)
            }),
            r#"{"v":1,"cmd":"scale","delta":-1}"#
        );
        assert_eq!(
            line(Request::Scale {
                workers: Some(3),
                delta: None
            }),
            r#"{"v":1,"cmd":"scale","workers":3}"#
        );
        assert_eq!(
            line(Request::Restart { slot: 2 }),
            r#"{"v":1,"cmd":"restart","slot":2}"#
        );
        assert_eq!(
            line(Request::Stop { now: true }),
            r#"{"v":1,"cmd":"stop","now":true}"#
        );
        assert_eq!(
            line(Request::Logs {
                lines: Some(10),
                follow: false,
                slot: None
            }),
            r#"{"v":1,"cmd":"logs","lines":10,"follow":false}"#
        );
    }

    #[test]
    fn every_request_round_trips() {
        let all = [
            Request::Status,
            Request::Reload,
            Request::Scale {
                workers: Some(4),
                delta: None,
            },
            Request::Scale {
                workers: None,
                delta: Some(2),
            },
            Request::Restart { slot: 1 },
            Request::Logs {
                lines: Some(5),
                follow: true,
                slot: Some(0),
            },
            Request::Logs {
                lines: None,
                follow: false,
                slot: None,
            },
            Request::Upgrade,
            Request::Stop { now: false },
            Request::Stop { now: true },
        ];
        for request in all {
            let written = line(request.clone());
            assert_eq!(
                parse(&written).unwrap(),
                RequestLine::new(request),
                "{written}"
            );
        }
    }

    #[test]
    fn lines_as_clients_write_them_today_parse() {
        // Keys in any order, nulls for absent options, defaults for missing flags.
        let parsed = parse(r#"{"cmd":"logs","follow":true,"lines":100,"slot":null,"v":1}"#);
        assert_eq!(
            parsed.unwrap().request,
            Request::Logs {
                lines: Some(100),
                follow: true,
                slot: None
            }
        );
        assert_eq!(
            parse(r#"{"v":1,"cmd":"stop"}"#).unwrap().request,
            Request::Stop { now: false }
        );
        assert_eq!(
            parse(r#"{"v":2,"cmd":"status"}"#).unwrap(),
            RequestLine {
                v: 2,
                request: Request::Status
            }
        );
        assert!(parse(r#"{"v":1,"cmd":"explode"}"#).is_err());
        assert!(
            parse(r#"{"cmd":"status"}"#).is_err(),
            "the version is required"
        );
        assert!(
            parse(r#"{"v":1,"cmd":"restart"}"#).is_err(),
            "a slot is required"
        );
    }
}
