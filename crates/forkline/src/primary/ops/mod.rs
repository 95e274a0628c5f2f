//! Operating a running cluster: the control socket, metrics, stats, the primary's signals,
//! and upgrades of the primary itself.

pub(crate) mod control;
#[cfg(feature = "axum")]
pub(crate) mod metrics;
pub(crate) mod signals;
pub(crate) mod stats;
pub(crate) mod upgrade;
