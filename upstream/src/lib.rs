//! Upstream tier: client uploads and requests to backend HTTP services.
//!
//! # Layout
//! - [`run`]: the tier's entry point.
//! - [`NoBackends`]: the `UpstreamLink` used while no backend service is
//!   configured; it refuses every frame as retryable so that clients keep
//!   their uploads and requests instead of believing they were delivered.
//!
//! Backend pools, spooling and the reply path are not built yet.

use async_trait::async_trait;
use duplex_shared::links::{ClientContext, LinkError, UpstreamLink};
use duplex_shared::protocol::{Request, Upload, UploadAck};
use tokio_util::sync::CancellationToken;

/// Upstream configuration (no fields yet: there are no backend pools to configure).
#[derive(Debug, Clone, Default)]
pub struct UpstreamConfig {}

/// Listeners of the upstream tier (none yet: it is reached in process).
#[derive(Debug, Default)]
pub struct UpstreamListeners {}

/// Runs the tier until `shutdown` is cancelled.
pub async fn run(_config: UpstreamConfig, _listeners: UpstreamListeners, shutdown: CancellationToken) {
    shutdown.cancelled().await;
}

/// Refuses uploads and requests while no backend service exists.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoBackends;

#[async_trait]
impl UpstreamLink for NoBackends {
    async fn upload(&self, _from: &ClientContext, _upload: Upload) -> Result<UploadAck, LinkError> {
        Err(LinkError::Unavailable("no backend service is configured".into()))
    }

    async fn request(&self, _from: &ClientContext, _request: Request) -> Result<(), LinkError> {
        Err(LinkError::Unavailable("no backend service is configured".into()))
    }
}
