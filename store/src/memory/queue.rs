//! One client's message queue in memory: the same rules as the Redis scripts
//! (`store/scripts/`), written once in Rust.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::messages::*;

#[derive(Debug, Clone)]
struct Status {
    nonce: u32,
    state: MessageState,
    created: u64,
    expires: u64,
    sent: Option<u64>,
    acked: Option<u64>,
    expired: Option<u64>,
    fallback: Option<(u64, String)>,
}

#[derive(Debug, Default)]
pub(crate) struct ClientQueue {
    last_seq: u64,
    acked: u64,
    /// The highest seq written to any connection of the client (recorded
    /// when a connection ends): a resume acks no further than this.
    written: u64,
    bytes: u64,
    expired: u64,
    messages: BTreeMap<u64, MessageRecord>,
    statuses: HashMap<u64, Status>,
    idempotency: HashMap<String, (u64, u32, u64)>,
    // Expiry indexes, so tidying costs what it removes rather than a scan of
    // everything a busy client ever received: (when, seq) / (when, key).
    message_expiry: BTreeSet<(u64, u64)>,
    status_expiry: BTreeSet<(u64, u64)>,
    key_expiry: BTreeSet<(u64, String)>,
    /// Whether expiries are reported (a message was stored with `report_expiry`).
    pub(super) reports_expiry: bool,
    /// Expired messages not yet reported: (seq, nonce, created, expires).
    pub(super) unreported: Vec<(u64, u32, u64, u64)>,
    /// Expiries beyond `EXPIRED_LOG_MAX` unreported ones, not kept.
    pub(super) lost: u64,
    /// This client's entry in the store's expiry index.
    pub(super) indexed_at: Option<u64>,
}

impl ClientQueue {
    /// Whether messages are stored for the client (expired ones not yet tidied count too).
    pub fn holds_messages(&self) -> bool {
        !self.messages.is_empty()
    }

    /// Whether nothing is left to keep once due messages, statuses and keys
    /// are tidied: the queue may then be forgotten (as its Redis keys expire).
    pub fn is_forgettable(&mut self, now: u64) -> bool {
        self.tidy(now);
        self.messages.is_empty()
            && self.statuses.is_empty()
            && self.idempotency.is_empty()
            && self.unreported.is_empty()
    }

    /// The earliest expiry a scan must look at this client again, if any.
    pub(super) fn next_expiry(&self) -> Option<u64> {
        if !self.reports_expiry {
            return None;
        }
        let first = self.message_expiry.first().map(|&(when, _)| when);
        if self.unreported.is_empty() && self.lost == 0 {
            first
        } else {
            Some(0)
        }
    }

    /// Expires due messages and forgets statuses and keys past their retention.
    pub(super) fn tidy(&mut self, now: u64) {
        while let Some(&(when, seq)) = self.message_expiry.first() {
            if when > now {
                break;
            }
            self.message_expiry.pop_first();
            if let Some(m) = self.messages.remove(&seq) {
                self.bytes = self.bytes.saturating_sub(m.size());
                self.expired += 1;
                if self.reports_expiry {
                    if (self.unreported.len() as u64) < EXPIRED_LOG_MAX {
                        self.unreported.push((seq, m.nonce, m.created_ms, m.expires_ms));
                    } else {
                        self.lost += 1;
                    }
                }
                if let Some(st) = self.statuses.get_mut(&seq) {
                    st.state = MessageState::Expired;
                    st.expired = Some(now);
                }
            }
        }
        while let Some(&(when, seq)) = self.status_expiry.first() {
            if when > now {
                break;
            }
            self.status_expiry.pop_first();
            self.statuses.remove(&seq);
        }
        while self.key_expiry.first().is_some_and(|(when, _)| *when <= now) {
            if let Some((_, key)) = self.key_expiry.pop_first() {
                self.idempotency.remove(&key);
            }
        }
    }

    pub fn enqueue(&mut self, client_id: &str, msg: &NewMessage, limits: QueueLimits, now: u64) -> Enqueued {
        self.tidy(now);
        if let Some(key) = &msg.idempotency_key {
            if let Some(&(seq, nonce, _)) = self.idempotency.get(key) {
                return Enqueued::Duplicate {
                    seq,
                    msg_id: message_id(client_id, seq, nonce),
                };
            }
        }
        let size = msg.record.size();
        if self.messages.len() as u64 + 1 > limits.max_messages || self.bytes + size > limits.max_bytes {
            return Enqueued::Full {
                messages: self.messages.len() as u64,
                bytes: self.bytes,
            };
        }
        self.last_seq += 1;
        self.reports_expiry |= msg.report_expiry;
        let seq = self.last_seq;
        let r = &msg.record;
        self.statuses.insert(
            seq,
            Status {
                nonce: r.nonce,
                state: MessageState::Queued,
                created: r.created_ms,
                expires: r.expires_ms,
                sent: None,
                acked: None,
                expired: None,
                fallback: None,
            },
        );
        self.status_expiry.insert((r.expires_ms + STATUS_RETENTION_MS, seq));
        self.message_expiry.insert((r.expires_ms, seq));
        self.messages.insert(seq, r.clone());
        self.bytes += size;
        if let Some(key) = &msg.idempotency_key {
            let until = now + msg.idempotency_ttl_ms;
            self.idempotency.insert(key.clone(), (seq, r.nonce, until));
            self.key_expiry.insert((until, key.clone()));
        }
        Enqueued::Stored {
            seq,
            msg_id: message_id(client_id, seq, r.nonce),
            route: None,
        }
    }

    /// The highest seq ever given out (or resumed from).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn pending(&mut self, client_id: &str, after: u64, max: usize, now: u64) -> Pending {
        self.tidy(now);
        let messages = self
            .messages
            .range(after.saturating_add(1)..)
            .take(max)
            .map(|(&seq, r)| StoredMessage {
                seq,
                msg_id: message_id(client_id, seq, r.nonce),
                record: r.clone(),
            })
            .collect();
        Pending {
            messages,
            acked: self.acked,
        }
    }

    pub fn ack(&mut self, seq: u64, now: u64) -> u64 {
        // No expiry sweep: a message at or below an ack reached the client.
        self.acked = self.acked.max(seq);
        let keep = self.messages.split_off(&seq.saturating_add(1));
        let done = std::mem::replace(&mut self.messages, keep);
        for (s, m) in &done {
            self.bytes = self.bytes.saturating_sub(m.size());
            self.message_expiry.remove(&(m.expires_ms, *s));
            if let Some(st) = self.statuses.get_mut(s) {
                st.state = MessageState::Acked;
                st.acked = Some(now);
            }
        }
        done.len() as u64
    }

    /// A connect's `last_seq`: acks what an earlier connection was given,
    /// no further; keeps later seqs above `last_seq` (in case the store lost
    /// what the client saw). Returns the seq the replay starts after.
    /// Later seqs go above `last_seq` (a connect's), even if the store lost the queue.
    pub fn raise_seq(&mut self, last_seq: u64) {
        self.last_seq = self.last_seq.max(last_seq);
    }

    pub fn resume(&mut self, last_seq: u64, now: u64) -> u64 {
        self.last_seq = self.last_seq.max(last_seq);
        let upto = last_seq.min(self.acked.max(self.written));
        self.ack(upto, now);
        upto
    }

    pub fn note_written(&mut self, seq: u64) {
        self.written = self.written.max(seq);
    }

    pub fn mark_sent(&mut self, seq: u64, now: u64) {
        if let Some(st) = self.statuses.get_mut(&seq) {
            if st.state == MessageState::Queued {
                st.state = MessageState::Sent;
                st.sent = Some(now);
            }
        }
    }

    pub fn note_fallback(&mut self, seq: u64, outcome: &str, now: u64) {
        if let Some(st) = self.statuses.get_mut(&seq) {
            st.fallback = Some((now, outcome.to_owned()));
        }
    }

    pub fn status(&mut self, client_id: &str, seq: u64, nonce: u32, now: u64) -> Option<MessageStatus> {
        self.tidy(now);
        let st = self.statuses.get(&seq).filter(|st| st.nonce == nonce)?;
        Some(
            MessageStatus {
                message_id: message_id(client_id, seq, nonce),
                client_id: client_id.to_owned(),
                seq,
                state: st.state,
                created_at: st.created,
                expires_at: st.expires,
                sent_at: st.sent,
                acked_at: st.acked,
                expired_at: st.expired,
                fallback_at: st.fallback.as_ref().map(|f| f.0),
                fallback: st.fallback.as_ref().map(|f| f.1.clone()),
            }
            .as_of(now),
        )
    }

    pub fn info(&mut self, now: u64) -> QueueInfo {
        self.tidy(now);
        QueueInfo {
            pending: self.messages.len() as u64,
            pending_bytes: self.bytes,
            last_acked_seq: self.acked,
            expired: self.expired,
        }
    }
}
