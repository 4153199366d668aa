//! Each client's OS push tokens (APNs, FCM, Web Push subscriptions): where a
//! message goes when the client's socket does not deliver it in time (the
//! push fallback). Registered by the app or its backend; removed when a
//! provider says a token is dead, or 30 days after its last registration.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::StoreError;

/// The OS push service a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushProvider {
    Apns,
    Fcm,
    Webpush,
}

impl PushProvider {
    pub fn as_str(self) -> &'static str {
        match self {
            PushProvider::Apns => "apns",
            PushProvider::Fcm => "fcm",
            PushProvider::Webpush => "webpush",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "apns" => Some(PushProvider::Apns),
            "fcm" => Some(PushProvider::Fcm),
            "webpush" => Some(PushProvider::Webpush),
            _ => None,
        }
    }
}

/// One registered token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushToken {
    pub provider: PushProvider,
    /// The provider's token (APNs device token, FCM registration token, or
    /// a Web Push subscription as JSON).
    pub token: String,
    /// The app (APNs topic, FCM app, Web Push site) it belongs to, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// When it was last registered, ms since the Unix epoch.
    pub registered_ms: u64,
}

impl PushToken {
    /// Whether the token is still within its life at `now_ms`.
    pub fn live(&self, now_ms: u64) -> bool {
        self.registered_ms + PUSH_TOKEN_TTL_MS > now_ms
    }
}

/// Tokens kept per client. Overflow policy: registering one more drops the
/// one registered longest ago (a phone that reinstalled its app many times
/// leaves only its newest tokens).
pub const MAX_PUSH_TOKENS: usize = 10;

/// How long a token lives after its last registration (apps register at
/// every start, so a token not seen for this long belongs to a gone install).
pub const PUSH_TOKEN_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

#[async_trait]
pub trait PushTokens: Send + Sync + 'static {
    /// Adds or renews `token` (same provider and token: replaced, app and time updated).
    async fn register_push_token(&self, client_id: &str, token: &PushToken) -> Result<(), StoreError>;

    /// The client's live tokens, newest first.
    async fn push_tokens(&self, client_id: &str, now_ms: u64) -> Result<Vec<PushToken>, StoreError>;

    /// Removes one token; whether it was there.
    async fn remove_push_token(&self, client_id: &str, provider: PushProvider, token: &str)
        -> Result<bool, StoreError>;
}

/// Keeps at most [`MAX_PUSH_TOKENS`] live tokens, newest first, `token` among them.
pub(crate) fn merge_token(tokens: &mut Vec<PushToken>, token: &PushToken, now_ms: u64) {
    tokens.retain(|t| !(t.provider == token.provider && t.token == token.token));
    tokens.retain(|t| t.live(now_ms));
    tokens.push(token.clone());
    tokens.sort_by_key(|t| std::cmp::Reverse(t.registered_ms));
    tokens.truncate(MAX_PUSH_TOKENS);
}
