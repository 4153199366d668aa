//! Each client's message queue on Redis (the scripts are in `scripts.rs`).

use std::sync::LazyLock;

use async_trait::async_trait;
use duplex_protocol::MAX_LAST_SEQ;
use redis::Value;

use super::batch::{BatchScript, CallArgs};
use super::scripts::{self, pack_numbers, status_bucket_name};
use super::{array, int, unavailable, Keys, RedisStore};
use crate::{
    message_id, Enqueued, MessageQueue, MessageRecord, MessageState, MessageStatus, NewMessage, Pending, QueueInfo,
    QueueLimits, Route, StoreError, StoredMessage, STATUS_RETENTION_MS,
};

pub(super) static ENQUEUE: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(scripts::ENQUEUE));
pub(super) static PENDING: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(scripts::PENDING));
pub(super) static ACK: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(scripts::ACK));
pub(super) static INFO: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(scripts::INFO));
pub(super) static EXPIRE_DUE: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(scripts::EXPIRE_DUE));
pub(super) static EXPIRY_SET: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(scripts::EXPIRY_SET));

/// The key of one client's queue hash (`h`, see `scripts.rs`); the
/// scripts find the client's status buckets from it.
pub(super) fn queue_key(keys: &Keys, client_id: &str) -> String {
    keys.client_key(client_id, "h")
}

/// The status bucket of message `seq` (see `scripts.rs`).
fn status_bucket(keys: &Keys, client_id: &str, seq: u64) -> String {
    let mut key = keys.client_key(client_id, "s:");
    key.push_str(&status_bucket_name(seq));
    key
}

/// Sent marks per pipeline: bounds one request's size.
const SENT_MARKS_PER_PIPELINE: usize = 512;

#[async_trait]
impl MessageQueue for RedisStore {
    async fn enqueue(
        &self,
        client_id: &str,
        msg: &NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Result<Enqueued, StoreError> {
        let prefix = self.keys.client(client_id);
        let idem_key = [prefix.as_str(), "i:", msg.idempotency_key.as_deref().unwrap_or("")].concat();
        let r = &msg.record;
        let idem_ttl = if msg.idempotency_key.is_some() {
            msg.idempotency_ttl_ms.max(1)
        } else {
            0
        };
        let mut call = CallArgs::with_keys([[prefix.as_str(), "h"].concat()]);
        call.key(idem_key)
            .key([prefix.as_str(), "route"].concat())
            .arg(r.encode())
            .arg(status_base(r))
            .arg(pack_numbers(&[r.expires_ms, r.size()]))
            .arg(pack_numbers(&[
                now_ms,
                limits.max_messages,
                limits.max_bytes,
                idem_ttl,
                u64::from(msg.report_expiry),
            ]));
        let (outcome, index_at) = match self.scripts.enqueue.call(client_id, call).await? {
            Value::BulkString(reply) => enqueued(client_id, r.nonce, &String::from_utf8_lossy(&reply))?,
            other => return Err(StoreError::Corrupt(format!("enqueue reply {other:?}"))),
        };
        if let Some(at) = index_at {
            self.index_expiry(client_id, at).await;
        }
        Ok(outcome)
    }

    async fn pending(&self, client_id: &str, after: u64, max: usize, now_ms: u64) -> Result<Pending, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(now_ms).arg(after).arg(max);
        let reply = array(self.scripts.pending.call(client_id, call).await?)?;
        let (acked, rest) = reply
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("empty pending reply".into()))?;
        let mut messages = Vec::with_capacity(rest.len() / 2);
        for pair in rest.chunks(2) {
            let [seq, Value::BulkString(record)] = pair else {
                return Err(StoreError::Corrupt("pending message without record".into()));
            };
            let seq = int(seq)?;
            let record = MessageRecord::decode(record)?;
            messages.push(StoredMessage {
                seq,
                msg_id: message_id(client_id, seq, record.nonce),
                record,
            });
        }
        Ok(Pending {
            messages,
            acked: int(acked)?,
        })
    }

    async fn ack(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<u64, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(seq).arg(now_ms).arg(0u8);
        int(&self.scripts.ack.call(client_id, call).await?)
    }

    async fn resume(&self, client_id: &str, last_seq: u64, now_ms: u64) -> Result<u64, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(last_seq.min(MAX_LAST_SEQ)).arg(now_ms).arg(1u8);
        int(&self.scripts.ack.call(client_id, call).await?)
    }

    async fn note_written(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        let mut note = redis::cmd("EVAL");
        note.arg(scripts::NOTE_WRITTEN)
            .arg(1)
            .arg(queue_key(&self.keys, client_id))
            .arg(seq.min(MAX_LAST_SEQ));
        self.conn.run_all(vec![note]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn mark_sent(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<(), StoreError> {
        self.mark_sent_many(&[(client_id.to_owned(), seq)], now_ms).await
    }

    /// Plain pipelined writes, no script: a mark only adds the sent time to
    /// the message's status (the first one stays), and reading ignores a
    /// sent time later than the ack or expiry it lost the race to. If the
    /// status bucket is gone (long expired), the write recreates it with the
    /// retention as its life instead of leaving it forever.
    async fn mark_sent_many(&self, items: &[(String, u64)], now_ms: u64) -> Result<(), StoreError> {
        for chunk in items.chunks(SENT_MARKS_PER_PIPELINE) {
            let mut cmds = Vec::with_capacity(chunk.len() * 2);
            for (client_id, seq) in chunk {
                let bucket = status_bucket(&self.keys, client_id, *seq);
                let mut mark = redis::cmd("HSETNX");
                let mut field = itoa::Buffer::new().format(*seq).to_owned();
                field.push('s');
                mark.arg(&bucket).arg(field).arg(now_ms);
                let mut life = redis::cmd("PEXPIRE");
                life.arg(&bucket).arg(STATUS_RETENTION_MS).arg("NX");
                cmds.extend([mark, life]);
            }
            self.conn.run_all(cmds).await.map_err(unavailable)?;
        }
        Ok(())
    }

    /// A plain write into the message's status bucket, as a sent mark.
    async fn note_fallback(&self, client_id: &str, seq: u64, outcome: &str, now_ms: u64) -> Result<(), StoreError> {
        let bucket = status_bucket(&self.keys, client_id, seq);
        let mut note = redis::cmd("HSET");
        let mut field = itoa::Buffer::new().format(seq).to_owned();
        field.push('f');
        note.arg(&bucket).arg(field).arg(format!("{now_ms} {outcome}"));
        let mut life = redis::cmd("PEXPIRE");
        life.arg(&bucket).arg(STATUS_RETENTION_MS).arg("NX");
        self.conn.run_all(vec![note, life]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn message_status(
        &self,
        client_id: &str,
        seq: u64,
        nonce: u32,
        now_ms: u64,
    ) -> Result<Option<MessageStatus>, StoreError> {
        let mut conn = self.conn.clone();
        let bucket = status_bucket(&self.keys, client_id, seq);
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(bucket)
            .arg(seq)
            .arg(format!("{seq}s"))
            .arg(format!("{seq}a"))
            .arg(format!("{seq}x"))
            .arg(format!("{seq}f"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let [Some(base), sent, acked, expired, fallback] =
            <[Option<String>; 5]>::try_from(fields).map_err(|f| StoreError::Corrupt(format!("status reply {f:?}")))?
        else {
            return Ok(None);
        };
        let Some((stored_nonce, created_at, expires_at)) = parse_status_base(&base) else {
            return Err(StoreError::Corrupt(format!("message status {base:?}")));
        };
        if stored_nonce != nonce {
            return Ok(None);
        }
        let time = |t: Option<String>| t.and_then(|v| v.parse::<u64>().ok());
        let (acked_at, expired_at) = (time(acked), time(expired));
        // A sent mark that lost the race to the ack or expiry is not a send.
        let sent_at = time(sent).filter(|&t| acked_at.or(expired_at).is_none_or(|end| t <= end));
        let state = if expired_at.is_some() {
            MessageState::Expired
        } else if acked_at.is_some() {
            MessageState::Acked
        } else if sent_at.is_some() {
            MessageState::Sent
        } else {
            MessageState::Queued
        };
        Ok(Some(
            MessageStatus {
                message_id: message_id(client_id, seq, nonce),
                client_id: client_id.to_owned(),
                seq,
                state,
                created_at,
                expires_at,
                sent_at,
                acked_at,
                expired_at,
                fallback_at: fallback.as_deref().and_then(|f| f.split_once(' ')?.0.parse().ok()),
                fallback: fallback
                    .as_deref()
                    .and_then(|f| f.split_once(' '))
                    .map(|(_, o)| o.to_owned()),
            }
            .as_of(now_ms),
        ))
    }

    async fn queue_info(&self, client_id: &str, now_ms: u64) -> Result<QueueInfo, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(now_ms);
        let reply = array(self.scripts.info.call(client_id, call).await?)?;
        match reply.as_slice() {
            [pending, bytes, acked, expired] => Ok(QueueInfo {
                pending: int(pending)?,
                pending_bytes: int(bytes)?,
                last_acked_seq: int(acked)?,
                expired: int(expired)?,
            }),
            other => Err(StoreError::Corrupt(format!("info reply {other:?}"))),
        }
    }

    async fn take_expired(&self, now_ms: u64, max_clients: usize) -> Result<crate::ExpiredScan, StoreError> {
        self.take_expired_now(now_ms, max_clients).await
    }
}

/// What enqueue.lua answered: `stored <seq> [<route>]` (or `stored+<at>`:
/// the client's expiry index entry must be `at`, returned second),
/// `duplicate <seq>~<nonce>` or `full <count> <bytes>`.
fn enqueued(client_id: &str, nonce: u32, reply: &str) -> Result<(Enqueued, Option<u64>), StoreError> {
    let corrupt = || StoreError::Corrupt(format!("enqueue reply {reply:?}"));
    let mut parts = reply.splitn(3, ' ');
    let (code, first, rest) = (parts.next(), parts.next().ok_or_else(corrupt)?, parts.next());
    let (code, index_at) = match code.and_then(|c| c.strip_prefix("stored+")) {
        Some(at) => (Some("stored"), Some(at.parse().map_err(|_| corrupt())?)),
        None => (code, None),
    };
    let outcome = match code {
        Some("stored") => {
            let seq = first.parse().map_err(|_| corrupt())?;
            Enqueued::Stored {
                seq,
                msg_id: message_id(client_id, seq, nonce),
                route: rest.map(Route::decode).transpose()?,
            }
        }
        Some("duplicate") => {
            let (seq, nonce) = first
                .split_once('~')
                .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)))
                .ok_or_else(corrupt)?;
            Enqueued::Duplicate {
                seq,
                msg_id: message_id(client_id, seq, nonce),
            }
        }
        Some("full") => Enqueued::Full {
            messages: first.parse().map_err(|_| corrupt())?,
            bytes: rest.and_then(|b| b.parse().ok()).ok_or_else(corrupt)?,
        },
        _ => return Err(corrupt()),
    };
    Ok((outcome, index_at))
}

/// `<nonce> <created> <expires>`, the part of a status written at enqueue.
fn status_base(r: &MessageRecord) -> String {
    let mut base = String::with_capacity(40);
    let mut digits = itoa::Buffer::new();
    base.push_str(digits.format(r.nonce));
    base.push(' ');
    base.push_str(digits.format(r.created_ms));
    base.push(' ');
    base.push_str(digits.format(r.expires_ms));
    base
}

/// Reads what `status_base` wrote.
pub(super) fn parse_status_base(base: &str) -> Option<(u32, u64, u64)> {
    let mut parts = base.split(' ');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}
