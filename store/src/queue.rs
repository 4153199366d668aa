//! A client's message queue: seqs, pending messages, acks, statuses.

use async_trait::async_trait;

use crate::messages::{Enqueued, ExpiredScan, MessageStatus, NewMessage, Pending, QueueInfo, QueueLimits};
use crate::StoreError;

/// The queue of messages waiting for each client (the downstream tier's and
/// the access tier's part of the store).
#[async_trait]
pub trait MessageQueue: Send + Sync + 'static {
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

    /// A connect's `last_seq` (at most [`duplex_protocol::MAX_LAST_SEQ`]):
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

    /// Records what the OS push fallback of message `seq` came to (shown by
    /// `message_status`); a later note replaces an earlier one.
    async fn note_fallback(&self, client_id: &str, seq: u64, outcome: &str, now_ms: u64) -> Result<(), StoreError>;

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

    /// Removes the due messages of up to `max_clients` clients that hold
    /// messages stored with `report_expiry`, and returns every such message
    /// that expired unacked since the last call, whichever call removed it
    /// (a read, an enqueue or this one). Each expiry is returned once across
    /// every caller, so several nodes may scan at once; one lost between the
    /// store and the caller (a crash in between) is not returned again.
    async fn take_expired(&self, now_ms: u64, max_clients: usize) -> Result<ExpiredScan, StoreError>;
}
