//! Stored messages: the per-client queue behind at-least-once delivery.
//!
//! Every qos-1 message gets the client's next `seq` when it is stored. It
//! stays until the client acknowledges a seq at or above it (acks are
//! cumulative) or its TTL ends. The message id is `<client_id>~<seq>~<nonce>`:
//! it names the client, so every key of a message shares the client's hash
//! slot, and the nonce keeps ids unique even if a store loses its counters.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use duplex_protocol::{Frame, Headers, Push, Reply};

/// A message as the store keeps it (seq and id are derived from where it is stored).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub nonce: u32,
    pub headers: Headers,
    pub payload: Bytes,
    /// Wall-clock times, ms since the Unix epoch.
    pub created_ms: u64,
    pub expires_ms: u64,
    /// Set when the message is a backend's reply to a client request rather than a push.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
}

/// The request a stored reply answers, and the backend's HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    pub request_id: u64,
    pub status: u16,
}

impl MessageRecord {
    /// Bytes this message counts against the client's byte cap.
    pub fn size(&self) -> u64 {
        (self.payload.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()) as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        // Sized up front: growing step by step copied the payload each time.
        let mut out = Vec::with_capacity(self.size() as usize + 16 * self.headers.len() + 64);
        // Encoding plain data into memory cannot fail.
        let _ = rmp_serde::encode::write_named(&mut out, self);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, crate::StoreError> {
        rmp_serde::from_slice(bytes).map_err(|e| crate::StoreError::Corrupt(format!("message record: {e}")))
    }
}

/// A pending message, ready to be pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub seq: u64,
    pub msg_id: String,
    pub record: MessageRecord,
}

impl StoredMessage {
    /// The frame that carries this message to its client: `reply` or `push`.
    pub fn frame(&self) -> Frame {
        match self.record.reply_to {
            Some(r) => Frame::Reply(Reply {
                id: r.request_id,
                status: r.status,
                headers: self.record.headers.clone(),
                body: self.record.payload.clone(),
                seq: self.seq,
            }),
            None => Frame::Push(Push {
                seq: self.seq,
                msg_id: self.msg_id.clone(),
                headers: self.record.headers.clone(),
                payload: self.record.payload.clone(),
                ack_now: false,
            }),
        }
    }
}

/// Builds the public id of message `seq` of `client_id`.
pub fn message_id(client_id: &str, seq: u64, nonce: u32) -> String {
    // Built by hand: one per message, and format! cost several times more.
    let mut id = String::with_capacity(client_id.len() + 30);
    id.push_str(client_id);
    id.push('~');
    id.push_str(itoa::Buffer::new().format(seq));
    id.push('~');
    for shift in (0..8).rev() {
        id.push(char::from(b"0123456789abcdef"[(nonce >> (shift * 4)) as usize & 15]));
    }
    id
}

/// Splits a message id into client, seq and nonce; `None` if it is not one of ours.
pub fn parse_message_id(id: &str) -> Option<(&str, u64, u32)> {
    let mut parts = id.split('~');
    let client = parts.next()?;
    let seq = parts.next()?.parse().ok()?;
    let nonce = u32::from_str_radix(parts.next()?, 16).ok()?;
    (parts.next().is_none() && duplex_protocol::valid_client_id(client)).then_some((client, seq, nonce))
}

/// Caps on one client's queue. Overflow policy: a new message that would
/// exceed either cap is refused (`Enqueued::Full`), never an older one dropped,
/// so the backend learns at once and the client never silently loses data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    pub max_messages: u64,
    pub max_bytes: u64,
}

/// A message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub record: MessageRecord,
    /// Backend-chosen key; the same key for the same client within `idempotency_ttl_ms`
    /// returns the first message instead of storing another.
    pub idempotency_key: Option<String>,
    pub idempotency_ttl_ms: u64,
    /// Report the message through [`crate::MessageQueue::take_expired`] if it
    /// expires unacked (the `expired` event). Costs an index entry per client
    /// whose earliest expiry it lowers, so it is asked for only when wanted.
    pub report_expiry: bool,
}

/// A message that expired before its client acked it, reported once by
/// [`crate::MessageQueue::take_expired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredMessage {
    pub client_id: String,
    /// The user the client id belongs to, if the store still knows it.
    pub user_id: Option<String>,
    pub seq: u64,
    pub msg_id: String,
    pub created_ms: u64,
    pub expires_ms: u64,
}

/// What one [`crate::MessageQueue::take_expired`] call found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpiredScan {
    pub messages: Vec<ExpiredMessage>,
    /// Whether more clients may be due now (the call stopped at its bound).
    pub more: bool,
    /// Expired messages that could not be reported (a client's log of
    /// unreported expiries was full, or the status was gone).
    pub lost: u64,
}

/// Unreported expiries kept per client between scans; more are counted as lost.
pub const EXPIRED_LOG_MAX: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored with `seq`; `route` is the client's route read in the same
    /// atomic step (saving the deliverer a round trip).
    Stored {
        seq: u64,
        msg_id: String,
        route: Option<crate::Route>,
    },
    /// The idempotency key was seen: this is the message stored the first time.
    Duplicate { seq: u64, msg_id: String },
    /// The queue is at a cap; nothing was stored.
    Full { messages: u64, bytes: u64 },
}

/// Pending messages after a seq, in seq order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    pub messages: Vec<StoredMessage>,
    /// The client's cumulative ack watermark.
    pub acked: u64,
}

/// Lifecycle of one stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageState {
    Queued,
    Sent,
    Acked,
    Expired,
}

impl MessageState {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Queued => "queued",
            MessageState::Sent => "sent",
            MessageState::Acked => "acked",
            MessageState::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => MessageState::Queued,
            "sent" => MessageState::Sent,
            "acked" => MessageState::Acked,
            "expired" => MessageState::Expired,
            _ => return None,
        })
    }
}

/// What `GET /v1/messages/{id}` reports. Times are ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageStatus {
    pub message_id: String,
    pub client_id: String,
    pub seq: u64,
    pub state: MessageState,
    pub created_at: u64,
    pub expires_at: u64,
    pub sent_at: Option<u64>,
    pub acked_at: Option<u64>,
    pub expired_at: Option<u64>,
    /// When the OS push fallback ran for it, and what each token's provider
    /// answered (`fcm:sent,apns:dead_token`, or `no_token`); absent if it did not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_at: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl MessageStatus {
    /// A queued or sent message past its expiry is expired, even before the
    /// store got round to removing it.
    pub fn as_of(mut self, now_ms: u64) -> Self {
        if matches!(self.state, MessageState::Queued | MessageState::Sent) && self.expires_at <= now_ms {
            self.state = MessageState::Expired;
            self.expired_at = Some(self.expires_at);
        }
        self
    }
}

/// One client's queue at a glance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueInfo {
    pub pending: u64,
    pub pending_bytes: u64,
    pub last_acked_seq: u64,
    /// Messages of this client that expired unacknowledged (kept as long as the queue's keys).
    pub expired: u64,
}

/// How long the status of a finished (acked or expired) message stays queryable.
pub const STATUS_RETENTION_MS: u64 = 24 * 3600 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_roundtrip_and_reject_foreign_ids() {
        let id = message_id("ios:dev-1", 42, 0xabc);
        assert_eq!(id, "ios:dev-1~42~00000abc");
        for (seq, nonce) in [(0, 0), (u64::MAX, u32::MAX), (7, 0xdead_beef), (1_000_000, 0x10)] {
            assert_eq!(message_id("c", seq, nonce), format!("c~{seq}~{nonce:08x}"));
        }
        assert_eq!(parse_message_id(&id), Some(("ios:dev-1", 42, 0xabc)));
        for bad in ["", "x", "a~1", "a~x~1", "a~1~zz", "a b~1~1", "a~1~1~1"] {
            assert_eq!(parse_message_id(bad), None, "{bad}");
        }
    }
}
