//! Proxy mode without the relay: an `SK_LOOKUP` program attached to the network namespace
//! steers each new connection for the public address straight to a ready worker's own
//! listening socket (taken from the worker with `pidfd_getfd` once its `$PORT` listens), round
//! robin; a miss (no worker in turn, a socket just closed) falls through to the primary's own
//! listener, which relays as before.

pub(crate) mod program;
mod socket;
mod table;

pub(crate) use socket::{serving, take_listener};
pub(crate) use table::KernelSteering;
