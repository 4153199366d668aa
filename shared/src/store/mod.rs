//! The shared state of a deployment, behind one trait with two
//! implementations: `MemoryStore` (single node) and `RedisStore`.
//!
//! Routes are leases: `client_id -> (node_id, conn_epoch)` with a TTL. A newer
//! connection overwrites the route and learns which one it replaced; removal
//! and renewal compare the whole value atomically, so a stale connection can
//! never delete or prolong the route of the one that replaced it.

use std::time::Duration;

use async_trait::async_trait;

mod memory;
mod memory_queue;
mod memory_sweep;
mod memory_upstream;
mod messages;
mod overview;
mod redis_batch;
mod redis_breaker;
mod redis_conn;
mod redis_scripts;
mod redis_store;
mod redis_upstream;
mod registry;
mod upstream_state;

pub use memory::MemoryStore;
pub use memory_sweep::MemoryHeld;
pub use messages::*;
pub use overview::{Backlog, Overview, QueueOverview};
pub use redis_store::RedisStore;
pub use registry::{NodeInfo, Registry};
pub use upstream_state::{FrameClaim, SpoolItem, SpoolLimits, SpoolPush, SpoolUsage, UpstreamState};

/// The outcome of writing a route: the new route (with its store-assigned
/// epoch) and the live one it replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    pub route: Route,
    pub previous: Option<Route>,
}

/// Why a route was not claimed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    /// The client id belongs to another user: nothing was changed (no new
    /// epoch, no route, no kick). The client is at fault; retrying will not help.
    #[error("client id belongs to another user")]
    Taken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ClaimError {
    pub fn retryable(&self) -> bool {
        match self {
            ClaimError::Taken => false,
            ClaimError::Store(e) => e.retryable(),
        }
    }
}

/// What a lease renewal found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewal {
    /// The lease still named this connection and was extended.
    Renewed,
    /// The lease had vanished (expired, or the store lost it) and was written again.
    Restored,
    /// Another connection owns the route now; this one must go.
    Replaced,
}

/// A lease renewal's outcome and the highest seq ever stored for the client
/// (0 if none): a connection that has sent less than that may have missed a
/// delivery (its downstream node died between storing and handing over).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseCheck {
    pub renewal: Renewal,
    pub last_seq: u64,
}

/// Where a client is connected: which node, and which connection on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    pub node_id: String,
    /// Assigned by the store from a per-client counter: a larger epoch is a
    /// newer connection, wherever it sits.
    pub conn_epoch: u64,
}

impl Route {
    /// Store encoding: `node_id|conn_epoch` (node ids hold no `|`).
    pub fn encode(&self) -> String {
        format!("{}|{}", self.node_id, self.conn_epoch)
    }

    pub fn decode(s: &str) -> Result<Route, StoreError> {
        let (node, epoch) = s
            .rsplit_once('|')
            .ok_or_else(|| StoreError::Corrupt(format!("route value {s:?}")))?;
        let conn_epoch = epoch
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("route epoch in {s:?}")))?;
        Ok(Route {
            node_id: node.to_owned(),
            conn_epoch,
        })
    }
}

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

/// How long a user's client set, and a client's epoch counter, live after its last connect.
pub const USER_CLIENTS_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

#[async_trait]
pub trait Store: UpstreamState + QueueOverview + Registry + Send + Sync + 'static {
    /// Gives `client_id` a new connection epoch and writes its route lease to
    /// `node_id` (and records the client under its user); returns the new
    /// route and the live route it replaced.
    ///
    /// A client id belongs to the user that first claimed it, for as long as
    /// the client has stored state (at least [`USER_CLIENTS_TTL`] after its
    /// last claim, and as long as its queue lives): a claim by another user
    /// is [`ClaimError::Taken`] and changes nothing.
    async fn claim_route(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Claim, ClaimError> {
        self.claim_route_after(client_id, user_id, node_id, ttl, 0).await
    }

    /// [`Self::claim_route`] for a connect that has processed every seq up
    /// to `last_seq`: in the same step the client's seq counter is raised to
    /// it, so a message stored once the route is visible, even before the
    /// connection's resume, gets a seq above `last_seq` (one at or below it
    /// would be dropped by the client as already processed).
    async fn claim_route_after(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
        last_seq: u64,
    ) -> Result<Claim, ClaimError>;

    /// The user owning `client_id`, if any (admin and tests).
    async fn client_owner(&self, client_id: &str) -> Result<Option<String>, StoreError>;

    /// The live route of `client_id`, if any.
    async fn get_route(&self, client_id: &str) -> Result<Option<Route>, StoreError>;

    /// Deletes the route only if it is still exactly `route`; returns whether it did.
    async fn release_route(&self, client_id: &str, route: &Route) -> Result<bool, StoreError>;

    /// Renews each lease still owned by its route, writes back leases that
    /// vanished, and reports routes now owned by another connection; one
    /// answer per input, in order, with the client's highest stored seq.
    async fn refresh_routes(&self, routes: &[(String, Route)], ttl: Duration) -> Result<Vec<LeaseCheck>, StoreError>;

    /// Client ids that have connected as `user_id`.
    async fn user_clients(&self, user_id: &str) -> Result<Vec<String>, StoreError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Stores a message for `client_id` with its next seq, unless a cap or
    /// the idempotency key says otherwise. Expired messages are removed first.
    async fn enqueue(
        &self,
        client_id: &str,
        msg: &NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Result<Enqueued, StoreError>;

    /// Up to `max` pending messages with seq > `after`, in seq order (expired ones are removed first).
    async fn pending(&self, client_id: &str, after: u64, max: usize, now_ms: u64) -> Result<Pending, StoreError>;

    /// Cumulative ack: removes every message with seq <= `seq` and marks it acked.
    /// Returns how many messages were removed.
    async fn ack(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<u64, StoreError>;

    /// A connect's `last_seq` (at most [`crate::protocol::MAX_LAST_SEQ`]):
    /// acks up to it, but never beyond what an earlier connection of the
    /// client was written (`note_written`) or acked, so a made-up `last_seq`
    /// removes nothing unseen. Later messages get seqs above `last_seq`, even
    /// if the store lost its counter. Returns the seq the replay starts after.
    async fn resume(&self, client_id: &str, last_seq: u64, now_ms: u64) -> Result<u64, StoreError>;

    /// Records that a connection of the client was written messages up to
    /// `seq` (kept as a high-water mark with the queue; nothing is written
    /// for a client the store holds no queue for).
    async fn note_written(&self, client_id: &str, seq: u64) -> Result<(), StoreError>;

    /// Records that message `seq` was handed to the client's access node.
    async fn mark_sent(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<(), StoreError>;

    /// `mark_sent` for many messages in one round trip where the store allows.
    async fn mark_sent_many(&self, items: &[(String, u64)], now_ms: u64) -> Result<(), StoreError> {
        for (client_id, seq) in items {
            self.mark_sent(client_id, *seq, now_ms).await?;
        }
        Ok(())
    }

    /// Status of message `seq` of `client_id` whose id carries `nonce`.
    async fn message_status(
        &self,
        client_id: &str,
        seq: u64,
        nonce: u32,
        now_ms: u64,
    ) -> Result<Option<MessageStatus>, StoreError>;

    /// Pending count and bytes, ack watermark and expiry count of one client.
    async fn queue_info(&self, client_id: &str, now_ms: u64) -> Result<QueueInfo, StoreError>;
}

/// Key names, hash-tagged so all keys of one client (or one user) share a Cluster slot.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // Concatenation rather than format!: keys are built several times per
    // message, and the formatting machinery cost ~5% of the node's CPU.
    pub fn route(&self, client_id: &str) -> String {
        self.client_key(client_id, "route")
    }

    pub fn epoch(&self, client_id: &str) -> String {
        self.client_key(client_id, "epoch")
    }

    /// The user that owns the client id (same slot as its queue).
    pub fn owner(&self, client_id: &str) -> String {
        self.client_key(client_id, "owner")
    }

    /// Prefix of every key of one client's queue (`...:h`, `...:q`, `...:s:<bucket>`, ...).
    pub fn client(&self, client_id: &str) -> String {
        self.client_key(client_id, "")
    }

    /// The client's key named `name` (`client(client_id) + name`).
    pub fn client_key(&self, client_id: &str, name: &str) -> String {
        [self.prefix.as_str(), "{c:", client_id, "}:", name].concat()
    }

    pub fn user_clients(&self, user_id: &str) -> String {
        [self.prefix.as_str(), "{u:", user_id, "}:clients"].concat()
    }
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
