//! Executing a validated push: store (qos 1), then deliver through the route.
//!
//! The ack contract: a qos-1 message is in the store before the caller gets
//! its `202`; delivery is attempted right after and, when it fails, retried
//! (`retry`) or left to the replay the client gets when it reconnects.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use duplex_shared::links::NodeLink;
use duplex_shared::protocol::{Frame, Push};
use duplex_store::{
    parse_message_id, Enqueued, MessageRecord, MessageState, NewMessage, QueueLimits, Route, Store, StoredMessage,
};
use futures_util::stream::{self, StreamExt};
use serde::Serialize;
use tracing::Instrument;

use crate::error::ApiError;
use crate::request::ValidPush;
use crate::{now_ms, Shared};

/// Targets stored and delivered concurrently per push (Redis pipelines them).
const PARALLEL_TARGETS: usize = 32;

/// One target's outcome.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemResult {
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub seq: u64,
    /// `delivered_to_node`, `queued`, `offline` (qos 0), or `rejected`.
    pub state: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acked: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ItemError>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ItemError {
    pub code: &'static str,
    pub message: String,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PushResponse {
    pub messages: Vec<ItemResult>,
    /// For `all`: how many connections took the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
}

fn item(client_id: &str, state: &'static str) -> ItemResult {
    ItemResult {
        client_id: client_id.to_owned(),
        message_id: None,
        seq: 0,
        state,
        duplicate: false,
        acked: None,
        error: None,
    }
}

impl Shared {
    /// Runs one validated push. Errors only for failures of the whole push.
    pub async fn push(&self, p: ValidPush) -> Result<PushResponse, ApiError> {
        if p.all {
            let frame = Frame::Push(Push {
                seq: 0,
                msg_id: qos0_id(),
                headers: p.headers,
                payload: p.payload,
                ack_now: false,
            });
            let delivered = self
                .nodes
                .broadcast(frame)
                .await
                .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "nodes_unavailable", e.to_string()))?;
            return Ok(PushResponse {
                messages: Vec::new(),
                delivered: Some(delivered),
            });
        }
        let targets = self.targets(&p).await?;
        let p = Arc::new(p);
        let now = now_ms();
        let accepted = tokio::time::Instant::now();
        let nonce_base: u32 = rand::random();
        let one_target = |i: usize, client_id: String| {
            let p = p.clone();
            async move {
                if p.qos == 0 {
                    Ok(self.deliver_qos0(&client_id, &p).await)
                } else {
                    self.push_stored(&client_id, &p, nonce_base.wrapping_add(i as u32), now, accepted)
                        .await
                }
            }
        };
        // Most pushes name one client (a batch is many such pushes): those
        // skip the concurrency machinery, an allocation and a copy of the
        // future per push.
        let results: Vec<Result<ItemResult, ApiError>> = if targets.len() == 1 {
            let client_id = targets.into_iter().next().unwrap_or_default();
            vec![one_target(0, client_id).await]
        } else {
            stream::iter(targets.into_iter().enumerate())
                .map(|(i, client_id)| one_target(i, client_id))
                .buffered(PARALLEL_TARGETS)
                .collect()
                .await
        };
        let mut messages = results.into_iter().collect::<Result<Vec<_>, _>>()?;
        if messages.len() == 1 && messages[0].error.is_some() {
            let e = messages.remove(0).error.unwrap_or(ItemError {
                code: "rejected",
                message: String::new(),
            });
            return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, e.code, e.message));
        }
        if p.wait_ack_ms > 0 {
            self.wait_for_acks(&mut messages, Duration::from_millis(p.wait_ack_ms))
                .await;
        }
        Ok(PushResponse {
            messages,
            delivered: None,
        })
    }

    /// Client ids named directly plus every client of the named users, deduplicated.
    async fn targets(&self, p: &ValidPush) -> Result<Vec<String>, ApiError> {
        let mut targets = p.client_ids.clone();
        for user in &p.user_ids {
            targets.extend(self.store.user_clients(user).await?);
        }
        targets.sort();
        targets.dedup();
        if targets.len() > self.config.max_targets {
            return Err(ApiError::bad(
                "too_many_targets",
                format!(
                    "the push expands to {} clients; at most {}",
                    targets.len(),
                    self.config.max_targets
                ),
            ));
        }
        Ok(targets)
    }

    async fn push_stored(
        &self,
        client_id: &str,
        p: &ValidPush,
        nonce: u32,
        now: u64,
        accepted: tokio::time::Instant,
    ) -> Result<ItemResult, ApiError> {
        let msg = NewMessage {
            record: MessageRecord {
                nonce,
                headers: p.headers.clone(),
                payload: p.payload.clone(),
                created_ms: now,
                expires_ms: now + p.ttl_ms,
                reply_to: None,
            },
            idempotency_key: p.idempotency_key.clone(),
            idempotency_ttl_ms: self.config.idempotency_ttl_s * 1000,
            report_expiry: self.expiry_events.is_some(),
        };
        let limits = QueueLimits {
            max_messages: self.config.queue_max_messages,
            max_bytes: self.config.queue_max_bytes,
        };
        let stored = self
            .store
            .enqueue(client_id, &msg, limits, now)
            .instrument(tracing::debug_span!("store", client_id))
            .await?;
        let (seq, msg_id, fresh_route) = match stored {
            Enqueued::Stored { seq, msg_id, route } => (seq, msg_id, Some(route)),
            Enqueued::Duplicate { seq, msg_id } => (seq, msg_id, None),
            Enqueued::Full { messages, bytes } => {
                self.metrics
                    .inc("duplex_pushes_rejected_total", &[("code", "queue_full")]);
                let mut r = item(client_id, "rejected");
                r.error = Some(ItemError {
                    code: "queue_full",
                    message: format!(
                        "client {client_id} has {messages} pending messages ({bytes} bytes); caps are {} and {}",
                        limits.max_messages, limits.max_bytes
                    ),
                });
                return Ok(r);
            }
        };
        let mut r = item(client_id, "queued");
        r.seq = seq;
        r.duplicate = fresh_route.is_none();
        if let Some(route) = fresh_route {
            self.counts.accepted_qos1.inc();
            if let (Some(fallback), Some(fallbacks)) = (&p.fallback, &self.fallbacks) {
                let mut fallback = fallback.clone();
                if route.is_none() && fallback.at_once_if_offline {
                    fallback.after = std::time::Duration::ZERO;
                }
                fallbacks
                    .schedule(client_id, seq, nonce, &msg_id, now + p.ttl_ms, fallback)
                    .await;
            }
            let stored = StoredMessage {
                seq,
                msg_id: msg_id.clone(),
                record: msg.record,
            };
            let ack_now = p.wait_ack_ms > 0;
            if self.deliver_stored(client_id, route, stored, ack_now).await == Delivery::Delivered {
                self.counts.delivery_seconds.observe(accepted.elapsed());
                r.state = "delivered_to_node";
            }
        } else {
            // The first call delivered (or queued) it; report where it is now.
            let status = match parse_message_id(&msg_id) {
                Some((c, s, n)) => self.store.message_status(c, s, n, now).await?,
                None => None,
            };
            r.state = match status.map(|s| s.state) {
                Some(MessageState::Sent | MessageState::Acked) => "delivered_to_node",
                _ => "queued",
            };
        }
        r.message_id = Some(msg_id);
        Ok(r)
    }

    /// Hands a just-stored message to the node holding its client; a failed
    /// delivery goes to the retrier, a missing route waits for the client's replay.
    /// `ack_now`: the caller waits for the ack, so the client is asked not to
    /// hold it back.
    pub(crate) async fn deliver_stored(
        &self,
        client_id: &str,
        route: Option<Route>,
        message: StoredMessage,
        ack_now: bool,
    ) -> Delivery {
        let seq = message.seq;
        let is_push = message.record.reply_to.is_none();
        let mut frame = message.frame();
        if let Frame::Push(push) = &mut frame {
            push.ack_now = ack_now;
        }
        let delivery = deliver_via(&*self.nodes, client_id, route, frame)
            .instrument(tracing::debug_span!("deliver", client_id, seq))
            .await;
        match delivery {
            // A reply's status is never asked for (its id is not handed out), so it gets no sent mark.
            Delivery::Delivered if is_push => {
                self.counts.delivered.inc();
                self.sent_marks.mark(client_id, seq);
            }
            Delivery::Delivered => {}
            Delivery::Failed => self.retrier.schedule(client_id, seq),
            Delivery::NoRoute => {}
        }
        delivery
    }

    async fn deliver_qos0(&self, client_id: &str, p: &ValidPush) -> ItemResult {
        let frame = Frame::Push(Push {
            seq: 0,
            msg_id: qos0_id(),
            headers: p.headers.clone(),
            payload: p.payload.clone(),
            ack_now: false,
        });
        let mut r = item(client_id, "offline");
        if let Frame::Push(push) = &frame {
            r.message_id = Some(push.msg_id.clone());
        }
        self.counts.accepted_qos0.inc();
        match deliver(&*self.store, &*self.nodes, client_id, frame).await {
            Delivery::Delivered => {
                self.counts.delivered.inc();
                r.state = "delivered_to_node";
            }
            Delivery::NoRoute => {}
            // Connected, but its node did not take it (full queue, node
            // gone) or the route could not be read: a qos-0 push is never
            // retried, so it is dropped.
            Delivery::Failed => r.state = "dropped",
        }
        r
    }

    /// Polls the status of each stored message until it is acked or the wait ends.
    async fn wait_for_acks(&self, messages: &mut [ItemResult], wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut delay = Duration::from_millis(5);
        loop {
            let mut all_acked = true;
            for m in messages.iter_mut().filter(|m| m.acked != Some(true)) {
                let Some((c, s, n)) = m.message_id.as_deref().and_then(parse_message_id) else {
                    continue;
                };
                let acked = matches!(
                    self.store
                        .message_status(c, s, n, now_ms())
                        .await
                        .ok()
                        .flatten()
                        .map(|st| st.state),
                    Some(MessageState::Acked)
                );
                m.acked = Some(acked);
                all_acked &= acked;
            }
            if all_acked || tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(delay.min(deadline - tokio::time::Instant::now())).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The client's access node took the frame.
    Delivered,
    /// The client is not connected; stored messages wait for its replay.
    NoRoute,
    /// A route exists but the node did not take the frame (stale route,
    /// unreachable node, full queue) or the route could not be read: retry.
    Failed,
}

/// Hands `frame` to the node holding `client_id` now.
pub async fn deliver(store: &dyn Store, nodes: &dyn NodeLink, client_id: &str, frame: Frame) -> Delivery {
    match store.get_route(client_id).await {
        Ok(route) => deliver_via(nodes, client_id, route, frame).await,
        Err(e) => {
            tracing::warn!(error = %e, "route lookup failed");
            Delivery::Failed
        }
    }
}

/// Hands `frame` to the connection named by `route`, already read.
pub async fn deliver_via(nodes: &dyn NodeLink, client_id: &str, route: Option<Route>, frame: Frame) -> Delivery {
    let Some(route) = route else {
        return Delivery::NoRoute;
    };
    match nodes
        .deliver(&route.node_id, client_id, Some(route.conn_epoch), frame)
        .await
    {
        Ok(()) => Delivery::Delivered,
        Err(e) => {
            tracing::debug!(error = %e, node = %route.node_id, "delivery failed");
            Delivery::Failed
        }
    }
}

fn qos0_id() -> String {
    format!("q0~{:016x}", rand::random::<u64>())
}
