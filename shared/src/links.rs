//! The traits through which tiers reach each other. All-in-one mode wires
//! them in process; split mode puts a network hop behind the same traits, so
//! tier code never asks which deployment it runs in.

use async_trait::async_trait;

use crate::protocol::{Frame, Request, Upload, UploadAck};
use duplex_store::Route;

/// Who sent a frame: fixed at authentication, passed along with every forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientContext {
    pub client_id: String,
    pub user_id: String,
    pub route: Route,
}

/// A link call that failed, naming the side at fault and whether to retry.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// No node or backend could take the call now; retrying later may succeed.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The target node does not hold this client (stale route); the caller retries via a fresh route.
    #[error("client not connected here")]
    NotHere,
    /// The client's outbound queue is full; it is being disconnected as a slow consumer.
    #[error("client outbound queue full")]
    QueueFull,
    /// The frame was refused and repeating it will not help.
    #[error("rejected: {0}")]
    Rejected(String),
    /// The serving side failed in a way repeating will not fix (it reads
    /// corrupt stored data, or has a bug): the caller was not at fault.
    #[error("internal: {0}")]
    Internal(String),
}

impl LinkError {
    pub fn retryable(&self) -> bool {
        !matches!(self, LinkError::Rejected(_) | LinkError::Internal(_))
    }
}

impl From<duplex_store::StoreError> for LinkError {
    /// Keeps whether retrying may help: an unreachable store may come back,
    /// corrupt data or a failed store client will not.
    fn from(e: duplex_store::StoreError) -> Self {
        use duplex_store::StoreError;
        match e {
            StoreError::Unavailable(_) => LinkError::Unavailable(format!("store: {e}")),
            StoreError::Corrupt(_) | StoreError::Internal(_) => LinkError::Internal(format!("store: {e}")),
        }
    }
}

/// Access -> upstream: client frames bound for backends.
#[async_trait]
pub trait UpstreamLink: Send + Sync + 'static {
    /// Forwards an upload; resolves once the backend accepted it or it was spooled.
    async fn upload(&self, from: &ClientContext, upload: Upload) -> Result<UploadAck, LinkError>;

    /// Accepts a request; its reply travels back later through downstream delivery.
    async fn request(&self, from: &ClientContext, request: Request) -> Result<(), LinkError>;
}

/// Downstream/access -> an access node: deliver frames to, or kick, a connection.
#[async_trait]
pub trait NodeLink: Send + Sync + 'static {
    /// Hands `frame` to the connection of `client_id` on `node_id`. With
    /// `conn_epoch`, only that exact connection qualifies.
    async fn deliver(
        &self,
        node_id: &str,
        client_id: &str,
        conn_epoch: Option<u64>,
        frame: Frame,
    ) -> Result<(), LinkError>;

    /// Closes the connection `route` of `client_id` with a `Kicked` frame.
    /// Succeeds when that connection is gone afterwards (also if it already was).
    async fn kick(&self, client_id: &str, route: &Route, reason: &str) -> Result<(), LinkError>;

    /// Hands `frame` to every connection on every access node (qos 0, never
    /// stored); returns how many connections took it.
    async fn broadcast(&self, frame: Frame) -> Result<u64, LinkError>;

    /// When connection `route` of `client_id` was accepted (ms since the Unix epoch),
    /// if it is still connected.
    async fn connected_since(&self, client_id: &str, route: &Route) -> Result<Option<u64>, LinkError>;

    /// Whether `node_id` still holds its registry lease: a route to a node
    /// that stopped heartbeating (killed, hung) names no live connection.
    /// One process serving every client itself has no peers to lose.
    async fn is_live(&self, _node_id: &str) -> Result<bool, LinkError> {
        Ok(true)
    }
}

/// Upstream -> downstream: backend replies to client requests, stored and
/// delivered like qos-1 pushes so they reach the client wherever it is now.
#[async_trait]
pub trait ReplyLink: Send + Sync + 'static {
    /// Stores `reply` for `client_id` until `expires_ms` (ms since the Unix
    /// epoch) and hands it to the client's current connection. Storing the
    /// same request id twice keeps the first reply.
    async fn reply(&self, client_id: &str, reply: crate::protocol::Reply, expires_ms: u64) -> Result<(), LinkError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use duplex_store::StoreError;

    #[test]
    fn a_store_error_keeps_whether_retrying_may_help() {
        let down = LinkError::from(StoreError::Unavailable("refused".into()));
        assert!(matches!(down, LinkError::Unavailable(_)) && down.retryable());
        let corrupt = LinkError::from(StoreError::Corrupt("spool entry".into()));
        assert!(matches!(corrupt, LinkError::Internal(_)) && !corrupt.retryable());
        let broken = LinkError::from(StoreError::Internal("closed".into()));
        assert!(matches!(broken, LinkError::Internal(_)) && !broken.retryable());
    }
}
