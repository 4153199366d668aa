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

fn bad(message: impl Into<String>) -> ApiError {
    ApiError::bad("bad_push_token", message)
}

/// The provider and the token in its stored form, or why not (the rules are
/// `duplex_shared::push_tokens`, shared with the `register_push` frame).
pub(crate) fn check(request: &TokenRequest) -> Result<(PushProvider, String, Option<String>), ApiError> {
    let token = match (&request.token, request.provider.as_str()) {
        (serde_json::Value::String(s), _) => s.clone(),
        (serde_json::Value::Object(_), "webpush") => request.token.to_string(),
        _ => return Err(bad("token must be a string (a Web Push subscription may be an object)")),
    };
    duplex_shared::push_tokens::check_push_token(&request.provider, &token, request.app.as_deref()).map_err(bad)
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

    #[test]
    fn a_subscription_may_come_as_an_object_or_as_its_text() {
        let sub = serde_json::json!({"endpoint": "https://push.example.net/abc", "keys": {
            "p256dh": "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM",
            "auth": "tBHItJI5svbpez7KI4CCXg"}});
        let request = |token: serde_json::Value| TokenRequest {
            provider: "webpush".into(),
            token,
            app: None,
        };
        let as_object = check(&request(sub.clone())).expect("object").1;
        let as_text = check(&request(sub.to_string().into())).expect("text").1;
        assert_eq!(as_object, as_text);
        let fcm_object = TokenRequest {
            provider: "fcm".into(),
            token: sub,
            app: None,
        };
        assert!(check(&fcm_object).is_err(), "only a subscription may be an object");
    }
}
