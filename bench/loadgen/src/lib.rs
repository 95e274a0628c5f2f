//! Shared pieces of forkline's load tools: the seed workload's response line, the
//! connection-per-request client, the multi-threaded driver and the report.
//!
//! Two binaries sit on top: `loadgen` (the client) and `limit-server` (the seed handler with
//! nothing around it, used as "the physical limit" of this machine). See `bench/README.md`.

#![warn(missing_docs)]

pub mod client;
pub mod driver;
pub mod duration;
pub mod report;
pub mod response;
