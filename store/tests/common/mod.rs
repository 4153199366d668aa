//! What the store contract's files share: a fixed clock, caps, messages.

#![allow(dead_code)]

use std::time::Duration;

use duplex_store::{Enqueued, MessageRecord, NewMessage, QueueLimits};

pub const TTL: Duration = Duration::from_secs(30);

pub const NOW: u64 = 1_800_000_000_000;
pub const LIMITS: QueueLimits = QueueLimits {
    max_messages: 100,
    max_bytes: 10_000,
};

pub fn msg(payload: &str, ttl_ms: u64, key: Option<&str>) -> NewMessage {
    NewMessage {
        record: MessageRecord {
            reply_to: None,
            nonce: rand::random(),
            headers: Default::default(),
            payload: payload.as_bytes().to_vec().into(),
            created_ms: NOW,
            expires_ms: NOW + ttl_ms,
        },
        idempotency_key: key.map(str::to_owned),
        idempotency_ttl_ms: 60_000,
        report_expiry: false,
    }
}

pub fn stored(e: Enqueued) -> (u64, String) {
    match e {
        Enqueued::Stored { seq, msg_id, .. } => (seq, msg_id),
        other => panic!("expected Stored, got {other:?}"),
    }
}
