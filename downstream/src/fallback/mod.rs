//! The OS push fallback (docs/API.md, "fallback"): a stored push that asks
//! for it and is not acked within `after_ms` is sent as an OS notification
//! to the client's push tokens. The message id travels in the notification's
//! data (`duplex_message_id`) so the SDK can drop the copy the socket brings.
//!
//! Fallbacks wait on the node that stored the push, in a bounded queue
//! (`downstream.fallback.queue`; overflow: the push is still stored and
//! delivered, its fallback dropped and counted). A node that stops loses the
//! fallbacks waiting on it (the messages themselves are in the store).
//! Providers: FCM (HTTP v1, service account), APNs (HTTP/2, .p8 token
//! auth), Web Push (RFC 8291 encryption, VAPID); a token of a provider that
//! is not configured is counted as `provider_not_configured`.

mod apns;
mod fcm;
mod webpush;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use duplex_shared::metrics::Metrics;
use duplex_store::{MessageState, PushProvider, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::ApiError;

/// `downstream.fallback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// `after_ms` of a push that asks for a fallback without one. Default 5000.
    pub after_ms: u64,
    /// Fallbacks waiting per node; beyond, a push's fallback is dropped and counted. Default 100000.
    pub queue: usize,
    /// Tries per token for provider errors worth retrying (5xx, 429, timeouts). Default 5.
    pub max_attempts: u32,
    /// FCM over its HTTP v1 API. Unset: FCM tokens get no fallback.
    pub fcm: Option<FcmConfig>,
    /// APNs over HTTP/2 with a .p8 signing key. Unset: APNs tokens get no fallback.
    pub apns: Option<ApnsConfig>,
    /// Web Push with a VAPID key. Unset: Web Push subscriptions get no fallback.
    pub webpush: Option<WebPushConfig>,
}

impl Default for FallbackConfig {
    fn default() -> Self {
        FallbackConfig {
            after_ms: 5_000,
            queue: 100_000,
            max_attempts: 5,
            fcm: None,
            apns: None,
            webpush: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The Firebase service account key (JSON: `client_email`, `private_key`, `token_uri`, `project_id`).
    pub service_account_file: PathBuf,
    /// Base URL of the send API. Default `https://fcm.googleapis.com`.
    #[serde(default = "default_fcm_endpoint")]
    pub endpoint: String,
}

fn default_fcm_endpoint() -> String {
    "https://fcm.googleapis.com".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The .p8 signing key from Apple (PKCS#8 P-256).
    pub key_file: PathBuf,
    /// The key's id (10 characters, from the developer account).
    pub key_id: String,
    /// The team id (the tokens' `iss`).
    pub team_id: String,
    /// `https://api.push.apple.com` (default) or `https://api.sandbox.push.apple.com`.
    #[serde(default = "default_apns_endpoint")]
    pub endpoint: String,
    /// The bundle id (`apns-topic`) for tokens registered without an `app`.
    #[serde(default)]
    pub topic: Option<String>,
}

fn default_apns_endpoint() -> String {
    "https://api.push.apple.com".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID private key (PKCS#8 P-256 PEM); its public key is the
    /// `applicationServerKey` the web app subscribes with.
    pub vapid_key_file: PathBuf,
    /// How push services reach the sender: `mailto:ops@example.com` or an https URL.
    pub subject: String,
}

impl FallbackConfig {
    pub fn configured(&self) -> bool {
        self.fcm.is_some() || self.apns.is_some() || self.webpush.is_some()
    }
}

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

/// A push's `fallback` option, as the API takes it.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FallbackRequest {
    /// Send the notification if the client has not acked this long after the push. Unset: at
    /// once when the client is offline, else after `downstream.fallback.after_ms`.
    pub after_ms: Option<u64>,
    /// Notification title; without title and body the notification is a content-free wake-up (data only).
    pub title: Option<String>,
    pub body: Option<String>,
    /// Extra data for the app (string values); `duplex_message_id` is added.
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    /// Passed to the provider (FCM `collapse_key`).
    pub collapse_key: Option<String>,
}

/// A checked fallback.
#[derive(Debug, Clone)]
pub struct Fallback {
    pub after: Duration,
    /// The push set no `after_ms`: a client that is offline when the push is
    /// stored gets its notification at once (nothing can ack it sooner).
    pub at_once_if_offline: bool,
    pub title: Option<String>,
    pub body: Option<String>,
    pub data: BTreeMap<String, String>,
    pub collapse_key: Option<String>,
}

impl FallbackRequest {
    pub fn check(self, config: &FallbackConfig, ttl_ms: u64) -> Result<Fallback, ApiError> {
        let bad = |m: String| ApiError::bad("bad_fallback", m);
        let after_ms = self.after_ms.unwrap_or(config.after_ms);
        if after_ms > ttl_ms {
            return Err(bad(format!("after_ms {after_ms} is past the message's ttl")));
        }
        for (name, text) in [("title", &self.title), ("body", &self.body)] {
            if text.as_ref().is_some_and(|t| t.len() > 1024) {
                return Err(bad(format!("{name} is at most 1024 bytes")));
            }
        }
        let data_bytes: usize = self.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if self.data.len() > 32 || data_bytes > 2048 || self.data.contains_key("duplex_message_id") {
            return Err(bad(
                "data: at most 32 entries and 2048 bytes, without duplex_message_id".into(),
            ));
        }
        if self.collapse_key.as_ref().is_some_and(|c| c.is_empty() || c.len() > 64) {
            return Err(bad("collapse_key is 1..=64 bytes".into()));
        }
        Ok(Fallback {
            after: Duration::from_millis(after_ms),
            at_once_if_offline: self.after_ms.is_none(),
            title: self.title,
            body: self.body,
            data: self.data,
            collapse_key: self.collapse_key,
        })
    }
}

/// One waiting fallback.
struct Due {
    client_id: String,
    seq: u64,
    nonce: u32,
    message_id: String,
    expires_ms: u64,
    fallback: Fallback,
}

/// The node's fallback queue; cheap to clone.
#[derive(Clone)]
pub struct Fallbacks {
    queue: mpsc::Sender<(Instant, Due)>,
    metrics: Arc<Metrics>,
}

/// Notifications being sent at once, at most.
const SENDING: usize = 64;

impl Fallbacks {
    /// Starts the scheduler; `None` when no provider is configured.
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
        let (tx, rx) = mpsc::channel(config.queue);
        let senders = Senders {
            store,
            fcm,
            apns,
            webpush,
            metrics: metrics.clone(),
            max_attempts: config.max_attempts.max(1),
        };
        tokio::spawn(schedule(rx, Arc::new(senders), shutdown));
        Ok(Some(Fallbacks { queue: tx, metrics }))
    }

    /// Waits `fallback.after`, then sends unless the message was acked.
    pub fn schedule(
        &self,
        client_id: &str,
        seq: u64,
        nonce: u32,
        message_id: &str,
        expires_ms: u64,
        fallback: Fallback,
    ) {
        let due = Due {
            client_id: client_id.to_owned(),
            seq,
            nonce,
            message_id: message_id.to_owned(),
            expires_ms,
            fallback,
        };
        let at = Instant::now() + due.fallback.after;
        if self.queue.try_send((at, due)).is_err() {
            count(&self.metrics, "none", "queue_full");
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

/// Holds the waiting fallbacks in time order and sends each when due.
async fn schedule(mut rx: mpsc::Receiver<(Instant, Due)>, senders: Arc<Senders>, shutdown: CancellationToken) {
    let mut waiting: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut items: std::collections::HashMap<u64, Due> = std::collections::HashMap::new();
    let mut next_id = 0u64;
    let sending = Arc::new(tokio::sync::Semaphore::new(SENDING));
    loop {
        let next = waiting.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            got = rx.recv() => match got {
                Some((at, due)) => {
                    next_id += 1;
                    waiting.push(Reverse((at, next_id)));
                    items.insert(next_id, due);
                }
                None => return,
            },
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                while let Some(Reverse((at, id))) = waiting.peek().copied() {
                    if at > Instant::now() {
                        break;
                    }
                    waiting.pop();
                    let Some(due) = items.remove(&id) else { continue };
                    let Ok(permit) = sending.clone().acquire_owned().await else { return };
                    let senders = senders.clone();
                    tokio::spawn(async move {
                        senders.fire(due).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}

impl Senders {
    async fn fire(&self, due: Due) {
        let now = crate::now_ms();
        match self.store.message_status(&due.client_id, due.seq, due.nonce, now).await {
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
            return self.note(&due, "no_token").await;
        }
        let f = &due.fallback;
        let mut data = f.data.clone();
        data.insert("duplex_message_id".into(), due.message_id.clone());
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
        self.note(&due, &outcomes.join(",")).await;
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
