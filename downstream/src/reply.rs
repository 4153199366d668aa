//! Replies to client requests enter the client's queue like qos-1 pushes:
//! stored first (with the request deadline as TTL), then delivered through
//! the client's current route, retried, replayed on reconnect, acked by seq.

use async_trait::async_trait;
use duplex_shared::links::{LinkError, ReplyLink};
use duplex_shared::protocol::Reply;
use duplex_store::{Enqueued, MessageRecord, NewMessage, QueueLimits, ReplyTo, StoredMessage};

use crate::{now_ms, Shared};

#[async_trait]
impl ReplyLink for Shared {
    async fn reply(&self, client_id: &str, reply: Reply, expires_ms: u64) -> Result<(), LinkError> {
        let now = now_ms();
        let msg = NewMessage {
            record: MessageRecord {
                nonce: rand::random(),
                headers: reply.headers,
                payload: reply.body,
                created_ms: now,
                expires_ms: expires_ms.max(now + 1),
                reply_to: Some(ReplyTo {
                    request_id: reply.id,
                    status: reply.status,
                }),
            },
            // A request handled twice (a resend racing its original) answers once.
            idempotency_key: Some(format!("reply:{}", reply.id)),
            idempotency_ttl_ms: expires_ms.saturating_sub(now).max(1),
            report_expiry: self.expiry_events.is_some(),
        };
        let limits = QueueLimits {
            max_messages: self.config.queue_max_messages,
            max_bytes: self.config.queue_max_bytes,
        };
        let enqueued = self
            .store
            .enqueue(client_id, &msg, limits, now)
            .await
            .map_err(LinkError::from)?;
        match enqueued {
            Enqueued::Stored { seq, msg_id, route } => {
                let stored = StoredMessage {
                    seq,
                    msg_id,
                    record: msg.record,
                };
                self.deliver_stored(client_id, route, stored, false).await;
                Ok(())
            }
            Enqueued::Duplicate { .. } => Ok(()),
            Enqueued::Full { messages, .. } => Err(LinkError::Rejected(format!(
                "client {client_id} has {messages} pending messages; the reply does not fit"
            ))),
        }
    }
}
