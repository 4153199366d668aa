//! The OS push fallback (docs/API.md, "fallback"): a stored push that asks
//! for it and is not acked within `after_ms` is sent as an OS notification
//! to the client's push tokens. The message id travels in the notification's
//! data (`duplex_message_id`) so the SDK can drop the copy the socket brings.
//!
//! Fallbacks wait in the store (`FallbackSchedule`), put there before the
//! push is answered; every node with a provider takes those come due, each
//! under a lease, so a node that dies loses none: another sends them after
//! the lease (a notification may then go twice; the SDK drops copies by
//! message id). The schedule is bounded (`downstream.fallback.queue`;
//! overflow: the push is still stored and delivered, its fallback dropped
//! and counted).
//! Providers: FCM (HTTP v1, service account), APNs (HTTP/2, .p8 token
//! auth), Web Push (RFC 8291 encryption, VAPID); a token of a provider that
//! is not configured is counted as `provider_not_configured`.

mod apns;
mod config;
mod fcm;
mod webpush;

pub use config::{ApnsConfig, Fallback, FallbackConfig, FallbackRequest, FcmConfig, WebPushConfig};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use duplex_shared::metrics::Metrics;
use duplex_store::{MessageState, PushProvider, Scheduled, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

/// What one provider call came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Accepted,
    /// The token is dead (uninstalled app, expired subscription): remove it.
    DeadToken,
    /// Try again later (5xx, 429, no answer).
    Retry(String),
    /// Refused for good (a 4xx other than a dead token).
    Refused(String),
}

/// What a notification says, whichever provider carries it.
pub struct Notification {
    pub title: Option<String>,
    pub body: Option<String>,
    /// The push's data with `duplex_message_id` added.
    pub data: BTreeMap<String, String>,
    pub collapse_key: Option<String>,
    /// How long the provider may hold it: what is left of the message's TTL.
    pub ttl_s: u64,
}

/// What the store keeps of a waiting fallback (JSON, opaque to the store).
#[derive(Serialize, Deserialize)]
struct Spec {
    message_id: String,
    nonce: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    data: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    collapse_key: Option<String>,
}

/// One fallback come due.
struct Due {
    client_id: String,
    seq: u64,
    expires_ms: u64,
    spec: Spec,
}

/// Schedules fallbacks in the store; cheap to clone.
#[derive(Clone)]
pub struct Fallbacks {
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    max_waiting: usize,
    /// Wakes this node's taker for a fallback due at once.
    wake: Arc<Notify>,
}

/// Notifications being sent at once by a node, at most.
const SENDING: usize = 64;
/// How often a node looks for due fallbacks: a notification goes this much
/// after its time at most (at once for one this node scheduled due now).
const TAKE_INTERVAL: Duration = Duration::from_millis(250);
/// Takes per look at most; the rest waits for the next.
const TAKES_PER_LOOK: usize = 16;
/// How long a taken fallback is this node's. A node that dies while waiting
/// or sending leaves its fallbacks to other nodes after this.
const LEASE: Duration = Duration::from_secs(60);
/// Sending one fallback (every token, with retries) ends within this, well
/// inside the lease; one cut off is left to come due again after its lease
/// (its message's expiry bounds how often).
const SEND_BOUND: Duration = Duration::from_secs(45);

impl Fallbacks {
    /// Starts this node's taker; `None` when no provider is configured.
    pub fn start(
        config: &FallbackConfig,
        store: Arc<dyn Store>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Option<Fallbacks>, String> {
        if !config.configured() {
            return Ok(None);
        }
        let fcm = match &config.fcm {
            Some(c) => Some(fcm::Fcm::load(&c.service_account_file, &c.endpoint).map_err(|e| format!("fcm: {e}"))?),
            None => None,
        };
        let apns = match &config.apns {
            Some(c) => Some(
                apns::Apns::load(&c.key_file, &c.key_id, &c.team_id, &c.endpoint, c.topic.clone())
                    .map_err(|e| format!("apns: {e}"))?,
            ),
            None => None,
        };
        let webpush = match &config.webpush {
            Some(c) => {
                Some(webpush::WebPush::load(&c.vapid_key_file, &c.subject).map_err(|e| format!("webpush: {e}"))?)
            }
            None => None,
        };
        let senders = Senders {
            store: store.clone(),
            fcm,
            apns,
            webpush,
            metrics: metrics.clone(),
            max_attempts: config.max_attempts.max(1),
        };
        let wake = Arc::new(Notify::new());
        tokio::spawn(take(Arc::new(senders), wake.clone(), shutdown));
        Ok(Some(Fallbacks {
            store,
            metrics,
            max_waiting: config.queue,
            wake,
        }))
    }

    /// Puts the fallback in the store, due `fallback.after` from now; it is
    /// sent then unless the message was acked. Awaited before the push is
    /// answered, so a push answered has its fallback kept (or counted as not).
    pub async fn schedule(
        &self,
        client_id: &str,
        seq: u64,
        nonce: u32,
        message_id: &str,
        expires_ms: u64,
        fallback: Fallback,
    ) {
        let due_ms = crate::now_ms() + u64::try_from(fallback.after.as_millis()).unwrap_or(u64::MAX);
        let at_once = fallback.after.is_zero();
        let spec = Spec {
            message_id: message_id.to_owned(),
            nonce,
            title: fallback.title,
            body: fallback.body,
            data: fallback.data,
            collapse_key: fallback.collapse_key,
        };
        let spec = match serde_json::to_vec(&spec) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(error = %e, "fallback: could not encode");
                return count(&self.metrics, "none", "internal");
            }
        };
        let kept = self
            .store
            .schedule_fallback(client_id, seq, due_ms, expires_ms, &spec, self.max_waiting)
            .await;
        match kept {
            Ok(Scheduled::Waiting) if at_once => self.wake.notify_one(),
            Ok(Scheduled::Waiting) => {}
            Ok(Scheduled::Full) => count(&self.metrics, "none", "queue_full"),
            Err(e) => {
                tracing::warn!(error = %e, client_id, "fallback: not scheduled, the store is unavailable");
                count(&self.metrics, "none", "store_unavailable");
            }
        }
    }
}

fn count(metrics: &Metrics, provider: &str, outcome: &str) {
    metrics.inc("duplex_fallback_total", &[("provider", provider), ("outcome", outcome)]);
}

struct Senders {
    store: Arc<dyn Store>,
    fcm: Option<fcm::Fcm>,
    apns: Option<apns::Apns>,
    webpush: Option<webpush::WebPush>,
    metrics: Arc<Metrics>,
    max_attempts: u32,
}

/// Takes due fallbacks from the store and sends each, until `shutdown`
/// (fallbacks taken and not yet sent then come due again after their lease).
async fn take(senders: Arc<Senders>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let sending = Arc::new(Semaphore::new(SENDING));
    let lease_ms = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    let mut tick = tokio::time::interval(TAKE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        for _ in 0..TAKES_PER_LOOK {
            let room = sending.available_permits();
            if room == 0 {
                break;
            }
            let taken = match senders.store.take_due_fallbacks(crate::now_ms(), lease_ms, room).await {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::warn!(error = %e, "fallback: could not look for due fallbacks; trying again");
                    break;
                }
            };
            if taken.expired > 0 {
                senders
                    .metrics
                    .counter("duplex_fallback_total", &[("provider", "none"), ("outcome", "expired")])
                    .add(i64::try_from(taken.expired).unwrap_or(i64::MAX));
            }
            for due in taken.due {
                let Ok(permit) = sending.clone().acquire_owned().await else {
                    return;
                };
                let senders = senders.clone();
                tokio::spawn(async move {
                    senders.run(due).await;
                    drop(permit);
                });
            }
            if !taken.more {
                break;
            }
        }
    }
}

impl Senders {
    /// Sends one taken fallback within [`SEND_BOUND`], then removes it from the schedule.
    async fn run(&self, taken: duplex_store::DueFallback) {
        let spec = match serde_json::from_slice::<Spec>(&taken.spec) {
            Ok(spec) => spec,
            Err(e) => {
                tracing::error!(error = %e, client_id = %taken.client_id, "fallback: unreadable in the store; dropped");
                count(&self.metrics, "none", "internal");
                return self.finish(&taken.client_id, taken.seq).await;
            }
        };
        let due = Due {
            client_id: taken.client_id,
            seq: taken.seq,
            expires_ms: taken.expires_ms,
            spec,
        };
        if tokio::time::timeout(SEND_BOUND, self.fire(&due)).await.is_err() {
            tracing::warn!(client_id = %due.client_id, "fallback: not sent in time; it comes due again after its lease");
            return count(&self.metrics, "none", "timed_out");
        }
        self.finish(&due.client_id, due.seq).await;
    }

    async fn finish(&self, client_id: &str, seq: u64) {
        if let Err(e) = self.store.finish_fallback(client_id, seq).await {
            tracing::warn!(error = %e, client_id, "fallback: sent, but still scheduled; it may go again after its lease");
        }
    }

    async fn fire(&self, due: &Due) {
        let now = crate::now_ms();
        match self
            .store
            .message_status(&due.client_id, due.seq, due.spec.nonce, now)
            .await
        {
            Ok(Some(s)) if s.state == MessageState::Acked => return count(&self.metrics, "none", "acked_in_time"),
            Ok(Some(_)) => {}
            Ok(None) => return count(&self.metrics, "none", "message_gone"),
            Err(e) => {
                tracing::warn!(error = %e, client_id = %due.client_id, "fallback: message status unavailable; sending anyway");
            }
        }
        let tokens = match self.store.push_tokens(&due.client_id, now).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, client_id = %due.client_id, "fallback: push tokens unavailable");
                return count(&self.metrics, "none", "store_unavailable");
            }
        };
        if tokens.is_empty() {
            count(&self.metrics, "none", "no_token");
            return self.note(due, "no_token").await;
        }
        let f = &due.spec;
        let mut data = f.data.clone();
        data.insert("duplex_message_id".into(), f.message_id.clone());
        let note = Notification {
            title: f.title.clone(),
            body: f.body.clone(),
            data,
            collapse_key: f.collapse_key.clone(),
            ttl_s: due.expires_ms.saturating_sub(now) / 1000,
        };
        let mut outcomes = Vec::with_capacity(tokens.len());
        for token in tokens {
            let outcome = self.deliver(&due.client_id, &note, &token).await;
            outcomes.push(format!("{}:{outcome}", token.provider.as_str()));
        }
        self.note(due, &outcomes.join(",")).await;
    }

    /// What the fallback came to, for the message's status (best effort).
    async fn note(&self, due: &Due, outcome: &str) {
        if let Err(e) = self
            .store
            .note_fallback(&due.client_id, due.seq, outcome, crate::now_ms())
            .await
        {
            tracing::debug!(error = %e, "fallback: outcome not recorded in the message status");
        }
    }

    /// One provider call, retried while the provider says so (bounded).
    async fn call(&self, note: &Notification, token: &duplex_store::PushToken) -> Option<Sent> {
        Some(match token.provider {
            PushProvider::Fcm => self.fcm.as_ref()?.send(note, &token.token).await,
            PushProvider::Apns => self.apns.as_ref()?.send(note, &token.token, token.app.as_deref()).await,
            PushProvider::Webpush => self.webpush.as_ref()?.send(note, &token.token).await,
        })
    }

    /// Sends to one token, retrying as the provider allows; the outcome counted.
    async fn deliver(&self, client_id: &str, note: &Notification, token: &duplex_store::PushToken) -> &'static str {
        let provider = token.provider.as_str();
        let outcome = self.try_deliver(client_id, note, token).await;
        count(&self.metrics, provider, outcome);
        outcome
    }

    async fn try_deliver(&self, client_id: &str, note: &Notification, token: &duplex_store::PushToken) -> &'static str {
        let provider = token.provider.as_str();
        for attempt in 1..=self.max_attempts {
            let Some(sent) = self.call(note, token).await else {
                return "provider_not_configured";
            };
            match sent {
                Sent::Accepted => return "sent",
                Sent::DeadToken => {
                    if let Err(e) = self
                        .store
                        .remove_push_token(client_id, token.provider, &token.token)
                        .await
                    {
                        tracing::warn!(error = %e, provider, "fallback: could not remove a dead token");
                    }
                    return "dead_token";
                }
                Sent::Refused(why) => {
                    tracing::warn!(
                        client_id,
                        provider,
                        why,
                        "fallback: the provider refused the notification"
                    );
                    return "refused";
                }
                Sent::Retry(why) if attempt < self.max_attempts => {
                    count(&self.metrics, provider, "retried");
                    tracing::debug!(why, attempt, provider, "fallback: to be tried again");
                    let delay =
                        duplex_shared::rate::full_jitter(Duration::from_millis(200), Duration::from_secs(10), attempt);
                    tokio::time::sleep(delay).await;
                }
                Sent::Retry(why) => {
                    tracing::warn!(client_id, provider, why, "fallback: failed after every try");
                    return "failed";
                }
            }
        }
        "failed"
    }
}
