//! Downstream tier: the push API for backends and delivery to access nodes.
//!
//! # Layout
//! - [`run`]: the tier's entry point.
//!
//! The push API, offline hold and retries are not built yet; access already
//! exposes delivery through `duplex_shared::links::NodeLink`.

use tokio_util::sync::CancellationToken;

/// Downstream configuration (no fields yet).
#[derive(Debug, Clone, Default)]
pub struct DownstreamConfig {}

/// Listeners of the downstream tier (none yet).
#[derive(Debug, Default)]
pub struct DownstreamListeners {}

/// Runs the tier until `shutdown` is cancelled.
pub async fn run(_config: DownstreamConfig, _listeners: DownstreamListeners, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}
