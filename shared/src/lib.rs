//! Code every Duplex tier shares.
//!
//! # Layout
//! - [`protocol`]: the wire protocol, sans-IO (frames, structural check, codec).
//! - [`config`]: typed, validated configuration of every tier.
//! - [`auth`]: JWT verification with a pinned algorithm.
//! - [`links`]: traits through which tiers call each other.
//! - [`metrics`]: counters and gauges in the Prometheus text format.
//! - [`net`]: listener setup (backlog, `SO_REUSEPORT`).

pub mod auth;
pub mod config;
pub mod links;
pub mod metrics;
pub mod net;
/// The wire protocol lives in its own crate (the SDK's only Duplex dependency).
pub use duplex_protocol as protocol;
pub mod trace;
