//! What the upstream tier keeps in the shared store: which client frames were
//! already taken (so a resend after a reconnect does not reach the backend
//! twice), the per-service spool of uploads waiting for a backend, leases
//! that let one node drain a spool in order, endpoints isolated by an
//! operator (shared by every upstream node, kept until recovered), and the
//! routing table as changed through the admin API.

use async_trait::async_trait;

use crate::StoreError;

/// What an earlier sender of the same client frame left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameClaim {
    /// Nobody had it: the caller owns the frame now.
    New,
    /// Another attempt holds it and has not finished (or died; the claim expires).
    InFlight,
    /// It was handled; the outcome recorded by `finish_frame`.
    Done(String),
}

/// One spooled item, in spool order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolItem {
    pub id: String,
    pub data: Vec<u8>,
}

/// The bounds of one service's spool. An owner is the user whose uploads
/// wait there: a user can name new client ids at will, so the per-owner
/// bounds are what keep one user from filling the spool for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    pub max_items: u64,
    pub max_bytes: u64,
    pub max_owner_items: u64,
    pub max_owner_bytes: u64,
}

/// Items and bytes held in a spool, in all and by one owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolUsage {
    pub bytes: u64,
    pub owner_items: u64,
    pub owner_bytes: u64,
}

/// What became of a `spool_push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpoolPush {
    Stored,
    /// Nothing stored: the service's spool is at its item or byte bound.
    ServiceFull,
    /// Nothing stored: this owner's uploads are at the per-owner bound.
    OwnerFull,
}

#[async_trait]
pub trait UpstreamState: Send + Sync + 'static {
    /// Claims frame `key` of `client_id` for `ttl_ms`, unless someone claimed it before.
    async fn begin_frame(&self, client_id: &str, key: &str, ttl_ms: u64) -> Result<FrameClaim, StoreError>;

    /// Records the outcome of a claimed frame, kept for `ttl_ms` for resends to find.
    async fn finish_frame(&self, client_id: &str, key: &str, outcome: &str, ttl_ms: u64) -> Result<(), StoreError>;

    /// Drops a claim, so the client's resend is handled afresh.
    async fn forget_frame(&self, client_id: &str, key: &str) -> Result<(), StoreError>;

    /// Appends `data` of `owner` to the spool of `service`, within `limits`.
    async fn spool_push(
        &self,
        service: &str,
        owner: &str,
        data: &[u8],
        limits: &SpoolLimits,
    ) -> Result<SpoolPush, StoreError>;

    /// The oldest `max` items of the spool of `service`.
    async fn spool_peek(&self, service: &str, max: usize) -> Result<Vec<SpoolItem>, StoreError>;

    /// Removes one item (delivered or expired), returning its room to its owner.
    async fn spool_remove(&self, service: &str, id: &str) -> Result<(), StoreError>;

    async fn spool_len(&self, service: &str) -> Result<u64, StoreError>;

    /// What the spool of `service` holds: (items, bytes) in all and of `owner`.
    async fn spool_usage(&self, service: &str, owner: &str) -> Result<SpoolUsage, StoreError>;

    /// Takes or extends the lease `name` for `holder`; false when another holder has it.
    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError>;

    /// Marks endpoint `key` (`service url`) isolated, or recovers it.
    async fn set_isolated(&self, key: &str, isolated: bool) -> Result<(), StoreError>;

    /// Every isolated endpoint key.
    async fn isolated(&self) -> Result<Vec<String>, StoreError>;

    /// Replaces the routing table changed at run time (JSON of every service), for every node.
    async fn set_routing_table(&self, json: &str) -> Result<(), StoreError>;

    /// The routing table last changed at run time, if any.
    async fn routing_table(&self) -> Result<Option<String>, StoreError>;
}
