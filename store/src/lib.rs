//! The shared state of a deployment, split by role: [`Routes`] (where a
//! client is connected, who owns a client id), [`MessageQueue`] (each
//! client's messages), [`UpstreamState`] (frame claims, spools, leases,
//! isolation), [`QueueOverview`] (totals for operators), [`Registry`]
//! (which nodes are up), [`PushTokens`] (OS push tokens per client) and
//! [`FallbackSchedule`] (OS notifications waiting for their time). [`Store`] is all of them; two backends implement
//! it: [`MemoryStore`] (one node) and [`RedisStore`] (single, Sentinel or
//! Cluster), and answer to one contract suite (`duplex-testkit`).

use async_trait::async_trait;

mod fallbacks;
mod memory;
mod messages;
mod overview;
mod push_tokens;
mod queue;
mod redis;
mod registry;
mod routes;
mod upstream_state;

pub use fallbacks::{DueFallback, DueFallbacks, FallbackSchedule, Scheduled};
pub use memory::{MemoryHeld, MemoryStore};
pub use messages::*;
pub use overview::{Backlog, Overview, QueueOverview};
pub use push_tokens::{PushProvider, PushToken, PushTokens, MAX_PUSH_TOKENS, PUSH_TOKEN_TTL_MS};
pub use queue::MessageQueue;
pub use redis::keys::Keys;
pub use redis::RedisStore;
pub use registry::{NodeInfo, Registry};
pub use routes::{Claim, ClaimError, LeaseCheck, Renewal, Route, Routes, USER_CLIENTS_TTL};
pub use upstream_state::{FrameClaim, SpoolItem, SpoolLimits, SpoolPush, SpoolUsage, UpstreamState};

/// A store operation that failed. The store is the peer at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered in time; retrying may succeed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The store holds a value this build cannot read; retrying will not help.
    #[error("store holds corrupt data: {0}")]
    Corrupt(String),
    /// This node's own store client failed (a bug, or it is shutting down).
    #[error("store client failed: {0}")]
    Internal(String),
}

impl StoreError {
    pub fn retryable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Wall clock, ms since the Unix epoch: message times (creation, expiry, status)
/// are wall-clock times shared by every node, unlike `tokio::time` instants.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Every role of the store in one object, as a node holds it.
#[async_trait]
pub trait Store:
    Routes + MessageQueue + UpstreamState + QueueOverview + Registry + PushTokens + FallbackSchedule
{
    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_encoding_roundtrips_and_keys_are_hash_tagged() {
        let r = Route {
            node_id: "n-1".into(),
            conn_epoch: 77,
        };
        assert_eq!(Route::decode(&r.encode()).expect("decodes"), r);
        assert!(Route::decode("garbage").is_err());
        assert_eq!(Keys::new("dx:").route("abc"), "dx:{c:abc}:route");
        assert_eq!(Keys::new("dx:").user_clients("u1"), "dx:{u:u1}:clients");
    }
}
