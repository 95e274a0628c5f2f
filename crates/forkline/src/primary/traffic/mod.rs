//! Connections: the listeners, and how connections reach workers in each mode (round-robin
//! dispatch and its coalescing, steering programs, reuseport migration, the proxy and its relay).

pub(crate) mod coalesce;
pub(crate) mod counters;
pub(crate) mod dispatch;
pub(crate) mod listeners;
pub(crate) mod lookup;
pub(crate) mod migration;
pub(crate) mod proxy;
pub(crate) mod splice;
pub(crate) mod steer;
pub(crate) mod steering;
