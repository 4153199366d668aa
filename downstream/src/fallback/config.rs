//! What the fallback takes: `downstream.fallback` and a push's `fallback` option.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// `downstream.fallback`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FallbackConfig {
    /// `after_ms` of a push that asks for a fallback without one. Default 5000.
    pub after_ms: u64,
    /// Fallbacks waiting in the store (the deployment's); beyond, a push's fallback is dropped and counted. Default 100000.
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
