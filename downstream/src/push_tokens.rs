//! `PUT|GET|DELETE /v1/clients/{client_id}/push-tokens`: a backend registers
//! the OS push tokens (APNs, FCM, Web Push) of a client, for the push
//! fallback (docs/API.md). Every token is checked for its provider's shape
//! before it is stored: a hostile or broken one is refused with
//! `bad_push_token`, never stored to fail later at the provider.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use duplex_store::{PushProvider, PushToken};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::authorize_client_call;
use crate::error::ApiError;
use crate::request::parse_json;
use crate::{now_ms, Shared};

/// A token as the API takes it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// `apns`, `fcm` or `webpush`.
    pub provider: String,
    /// APNs: the device token (hex); FCM: the registration token; Web Push:
    /// the subscription (`{"endpoint": "https://...", "keys": {"p256dh", "auth"}}`)
    /// as an object or as its JSON text.
    #[schema(value_type = serde_json::Value)]
    pub token: serde_json::Value,
    /// The app: APNs topic (bundle id), FCM app, Web Push site; 1..=255 of `[A-Za-z0-9._-]`.
    #[serde(default)]
    pub app: Option<String>,
}

/// A stored token, as `GET` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenView {
    pub provider: &'static str,
    pub token: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// When it was last registered, ms since the Unix epoch.
    pub registered_at: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokensAnswer {
    pub client_id: String,
    /// Newest first; at most 10 (registering more drops the oldest).
    pub tokens: Vec<TokenView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TokenAnswer {
    pub client_id: String,
    pub provider: &'static str,
    /// `registered` (PUT) or `removed` (DELETE: false when it was not there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
}

/// Longest token kept (a Web Push subscription is a few hundred bytes).
const MAX_TOKEN_BYTES: usize = 4096;

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("bad_push_token", message)
}

/// The provider and the token in its stored form, or why not.
pub(crate) fn check(request: &TokenRequest) -> Result<(PushProvider, String, Option<String>), ApiError> {
    let provider = PushProvider::parse(&request.provider)
        .ok_or_else(|| bad(format!("provider {:?}: use apns, fcm or webpush", request.provider)))?;
    let token = match (provider, &request.token) {
        (PushProvider::Webpush, serde_json::Value::Object(_)) => webpush(&request.token)?,
        (PushProvider::Webpush, serde_json::Value::String(s)) => {
            webpush(&serde_json::from_str(s).map_err(|e| bad(format!("token: not a subscription: {e}")))?)?
        }
        (_, serde_json::Value::String(s)) => s.clone(),
        _ => return Err(bad("token must be a string (a Web Push subscription may be an object)")),
    };
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(bad(format!("token must be 1..={MAX_TOKEN_BYTES} bytes")));
    }
    match provider {
        // Apple's tokens are hex (32 bytes today; Apple says their length may change).
        PushProvider::Apns if !(16..=400).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Err(bad("an APNs device token is 16..=400 hex digits"))
        }
        PushProvider::Fcm if !token.bytes().all(|b| b.is_ascii_graphic()) => {
            return Err(bad("an FCM token is printable ASCII without spaces"))
        }
        _ => {}
    }
    let app = match &request.app {
        Some(app) => {
            let ok =
                (1..=255).contains(&app.len()) && app.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(bad("app must be 1..=255 of [A-Za-z0-9._-]"));
            }
            Some(app.clone())
        }
        None => None,
    };
    Ok((provider, token, app))
}

/// A Web Push subscription (RFC 8030 endpoint, RFC 8291 keys), checked and
/// written back as compact JSON: `endpoint` an https URL, `p256dh` an
/// uncompressed P-256 point (65 bytes), `auth` 16 bytes, both base64url.
fn webpush(subscription: &serde_json::Value) -> Result<String, ApiError> {
    let endpoint = subscription["endpoint"]
        .as_str()
        .ok_or_else(|| bad("a Web Push subscription needs an endpoint"))?;
    let url = axum::http::Uri::try_from(endpoint).map_err(|e| bad(format!("endpoint: {e}")))?;
    let host = url.host().unwrap_or_default();
    // Plain http only to a push service on this machine (a local relay, a test's fake).
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let secure = url.scheme_str() == Some("https") || (url.scheme_str() == Some("http") && loopback);
    if !secure || host.is_empty() {
        return Err(bad(
            "the endpoint must be an https URL (http only to a loopback address)",
        ));
    }
    let key = |name: &str, len: usize| -> Result<String, ApiError> {
        let text = subscription["keys"][name]
            .as_str()
            .ok_or_else(|| bad(format!("a Web Push subscription needs keys.{name}")))?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| bad(format!("keys.{name} is not base64url")))?;
        if bytes.len() != len || (name == "p256dh" && bytes[0] != 4) {
            return Err(bad(format!("keys.{name} must decode to {len} bytes")));
        }
        Ok(text.trim_end_matches('=').to_owned())
    };
    let (p256dh, auth) = (key("p256dh", 65)?, key("auth", 16)?);
    Ok(serde_json::json!({"endpoint": endpoint, "keys": {"p256dh": p256dh, "auth": auth}}).to_string())
}

/// The caller may act for the client, and the body names a well-formed token.
async fn checked(
    shared: &Shared,
    headers: &HeaderMap,
    client_id: &str,
    body: &[u8],
) -> Result<(PushProvider, String, Option<String>), ApiError> {
    authorize_client_call(shared, headers, client_id).await?;
    check(&parse_json::<TokenRequest>(body)?)
}

pub(crate) async fn register(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (provider, token, app) = checked(&shared, &headers, &client_id, &body).await?;
    let token = PushToken {
        provider,
        token,
        app,
        registered_ms: now_ms(),
    };
    shared.store.register_push_token(&client_id, &token).await?;
    Ok(Json(TokenAnswer {
        client_id,
        provider: provider.as_str(),
        registered: Some(true),
        removed: None,
    })
    .into_response())
}

pub(crate) async fn list(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    authorize_client_call(&shared, &headers, &client_id).await?;
    let tokens = shared.store.push_tokens(&client_id, now_ms()).await?;
    let tokens = tokens
        .into_iter()
        .map(|t| TokenView {
            provider: t.provider.as_str(),
            token: t.token,
            app: t.app,
            registered_at: t.registered_ms,
        })
        .collect();
    Ok(Json(TokensAnswer { client_id, tokens }).into_response())
}

pub(crate) async fn remove(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (provider, token, _) = checked(&shared, &headers, &client_id, &body).await?;
    let removed = shared.store.remove_push_token(&client_id, provider, &token).await?;
    Ok(Json(TokenAnswer {
        client_id,
        provider: provider.as_str(),
        registered: None,
        removed: Some(removed),
    })
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(provider: &str, token: serde_json::Value) -> TokenRequest {
        TokenRequest {
            provider: provider.into(),
            token,
            app: None,
        }
    }

    const P256DH: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
    const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

    #[test]
    fn each_provider_s_tokens_are_checked() {
        let ok = |p: &str, t: serde_json::Value| check(&request(p, t)).map(|(_, t, _)| t);
        assert!(ok("apns", "a1".repeat(32).into()).is_ok());
        assert!(ok("apns", "not hex at all, not hex at all".into()).is_err());
        assert!(ok("apns", "ab".into()).is_err());
        assert!(ok("fcm", "dGVzdA:APA91bH-token_123".into()).is_ok());
        assert!(ok("fcm", "with space".into()).is_err());
        assert!(ok("fcm", "x".repeat(4097).into()).is_err());
        assert!(ok("fcm", serde_json::json!(7)).is_err());
        assert!(ok("gcm", "x".into()).is_err());
        let sub =
            serde_json::json!({"endpoint": "https://push.example.net/abc", "keys": {"p256dh": P256DH, "auth": AUTH}});
        let stored = ok("webpush", sub.clone()).expect("a valid subscription");
        assert_eq!(ok("webpush", stored.clone().into()).expect("as JSON text"), stored);
        for broken in [
            serde_json::json!({"endpoint": "http://push.example.net/abc", "keys": {"p256dh": P256DH, "auth": AUTH}}),
            serde_json::json!({"endpoint": "ftp://push.example.net/abc", "keys": {"p256dh": P256DH, "auth": AUTH}}),
            serde_json::json!({"endpoint": "https://push.example.net/abc", "keys": {"p256dh": AUTH, "auth": AUTH}}),
            serde_json::json!({"endpoint": "https://push.example.net/abc", "keys": {"p256dh": P256DH}}),
            serde_json::json!({"keys": {"p256dh": P256DH, "auth": AUTH}}),
        ] {
            assert!(ok("webpush", broken.clone()).is_err(), "{broken}");
        }
        let mut with_app = request("fcm", "t".into());
        with_app.app = Some("com.example.app".into());
        assert!(check(&with_app).is_ok());
        with_app.app = Some("bad app".into());
        assert!(check(&with_app).is_err());
    }
}
