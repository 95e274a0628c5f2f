//! Round-robin mode: the dispatcher (who gets each connection, credit, handoff, re-dispatch),
//! the accept loops and threads that feed it, and taking back what a worker did not read.

pub(crate) mod accept;
pub(crate) mod conn;
pub(crate) mod dispatcher;
pub(crate) mod sink;
mod unread;
