//! The push fallback's schedule: OS notifications waiting for their time.
//! A downstream node that stores a push asking for a fallback puts it here
//! before it answers the push; every downstream node that sends fallbacks
//! takes what is due. An entry taken is leased to its taker and comes back
//! to a later taker if it is not finished within the lease, so a node that
//! dies while waiting or sending loses none (a notification may then go
//! twice; its data names the message, so the app drops the copy).

use async_trait::async_trait;

use crate::StoreError;

/// A fallback handed to a taker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DueFallback {
    pub client_id: String,
    pub seq: u64,
    /// The message's expiry: past it the fallback is dropped unsent.
    pub expires_ms: u64,
    /// What to send, in the downstream tier's encoding (opaque here).
    pub spec: Vec<u8>,
}

/// What one take found.
#[derive(Debug, Default)]
pub struct DueFallbacks {
    pub due: Vec<DueFallback>,
    /// Fallbacks removed unsent because their message expired first.
    pub expired: u64,
    /// More may be due: take again.
    pub more: bool,
}

/// Whether a fallback went into the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheduled {
    Waiting,
    /// `max_waiting` were waiting already; this one was not kept.
    Full,
}

#[async_trait]
pub trait FallbackSchedule: Send + Sync + 'static {
    /// Puts the fallback of message `seq` of `client_id` in the schedule, due
    /// at `due_ms`. Overflow policy: with `max_waiting` fallbacks waiting
    /// (in a Redis shard: its share of them) it is not kept (`Full`); the
    /// message itself is stored and delivered regardless. Scheduling the same
    /// message again changes nothing.
    async fn schedule_fallback(
        &self,
        client_id: &str,
        seq: u64,
        due_ms: u64,
        expires_ms: u64,
        spec: &[u8],
        max_waiting: usize,
    ) -> Result<Scheduled, StoreError>;

    /// Up to `limit` fallbacks due at `now_ms`, each handed to this caller
    /// alone for `lease_ms`; one not finished by then is due again.
    async fn take_due_fallbacks(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Result<DueFallbacks, StoreError>;

    /// Removes a fallback that was sent (or need not be).
    async fn finish_fallback(&self, client_id: &str, seq: u64) -> Result<(), StoreError>;
}
