//! Code every Duplex tier shares.
//!
//! # Layout
//! - [`protocol`]: the wire protocol, sans-IO (frames, structural check, codec).
//! - [`config`]: the configuration error every section uses, and the HTTP listeners' bounds.
//! - [`events`]: lifecycle events for backends and the sink the access tier hands them to.
//! - [`links`]: traits through which tiers call each other.
//! - [`metrics`]: counters and gauges in the Prometheus text format.
//! - [`net`]: listener setup (backlog, `SO_REUSEPORT`).
//! - [`process_metrics`]: the process's CPU, memory, file descriptors and build, at scrape time.
//! - [`rate`]: the token bucket behind every rate limit and the retry budget.
//! - [`secrets`]: constant-time comparison of API keys, tokens and secrets.

pub mod config;
pub mod events;
pub mod links;
pub mod metrics;
pub mod net;
pub mod process_metrics;
pub mod push_tokens;
pub mod rate;
pub mod secrets;
/// The wire protocol lives in its own crate (the SDK's only Duplex dependency).
pub use duplex_protocol as protocol;
pub mod trace;
