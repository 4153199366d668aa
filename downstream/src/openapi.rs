//! The push API's OpenAPI 3.1 document, served at `GET /openapi.json`.
//!
//! Request and answer types are the handlers' own (`ToSchema` derived next to
//! them); the few answers written from other crates' types or through custom
//! serialization have a schema type here, and a unit test checks each against
//! what the code really writes. Paths are declared on stubs so the handlers
//! stay readable; tests/openapi.rs checks that every route of docs/API.md is
//! here and that its examples validate.

use std::sync::LazyLock;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

use crate::push::{ItemError, ItemResult, PushResponse};
use crate::request::{BatchRequest, PushRequest};

/// `{code, message}`: every error answer.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorAnswer {
    /// Stable, machine-readable (docs/API.md lists them per endpoint).
    code: String,
    /// For humans.
    message: String,
}

/// One item of a batch answer: `status`, then that push's answer or its error.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchResult {
    status: u16,
    messages: Option<Vec<ItemResult>>,
    delivered: Option<u64>,
    code: Option<String>,
    message: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct BatchAnswer {
    results: Vec<BatchResult>,
}

/// `GET /v1/messages/{message_id}` (the store's `MessageStatus`). Times are ms since the Unix epoch.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct MessageStatusAnswer {
    message_id: String,
    client_id: String,
    seq: u64,
    /// `queued`, `sent`, `acked` or `expired`.
    state: String,
    created_at: u64,
    expires_at: u64,
    sent_at: Option<u64>,
    acked_at: Option<u64>,
    expired_at: Option<u64>,
    /// When the OS push fallback ran (absent if it did not).
    fallback_at: Option<u64>,
    /// Each token's outcome, `<provider>:<outcome>` joined by commas (`fcm:sent`), or `no_token`.
    fallback: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct KickAnswer {
    client_id: String,
    kicked: bool,
    node_id: Option<String>,
}

/// One access node of `GET /v1/nodes`.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct DispatchNode {
    node_id: String,
    /// `host:port` of each listener the node serves, or null.
    tcp: Option<String>,
    ws: Option<String>,
    tls: Option<String>,
    wss: Option<String>,
    region: Option<String>,
    /// Share of new connections, 1..=100 (free capacity).
    weight: u64,
}

#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct NodesAnswer {
    nodes: Vec<DispatchNode>,
}

#[utoipa::path(post, path = "/v1/push", tag = "push", request_body = PushRequest,
    responses(
        (status = 202, description = "One item per target client", body = PushResponse),
        (status = 400, description = "Invalid push; nothing stored", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
        (status = 413, description = "Payload or body too large", body = ErrorAnswer),
        (status = 429, description = "The one target's queue is full", body = ErrorAnswer),
        (status = 503, description = "Store or nodes unavailable; retry with the same idempotency_key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn push() {}

#[utoipa::path(post, path = "/v1/push/batch", tag = "push", request_body = BatchRequest,
    responses(
        (status = 202, description = "One result per push", body = BatchAnswer),
        (status = 400, description = "An item or the batch is invalid; nothing stored", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
        (status = 413, description = "Body too large", body = ErrorAnswer),
        (status = 503, description = "Store or nodes unavailable", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn push_batch() {}

#[utoipa::path(get, path = "/v1/messages/{message_id}", tag = "messages",
    params(("message_id" = String, Path, description = "As answered by a push")),
    responses(
        (status = 200, description = "The message's state", body = MessageStatusAnswer),
        (status = 404, description = "unknown_message", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn message_status() {}

#[utoipa::path(get, path = "/v1/clients/{client_id}", tag = "clients",
    params(("client_id" = String, Path)),
    responses(
        (status = 200, description = "Route and queue of the client", body = crate::api::ClientInfo),
        (status = 400, description = "bad_client_id", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn client_info() {}

#[utoipa::path(delete, path = "/v1/clients/{client_id}", tag = "clients",
    params(("client_id" = String, Path)),
    responses(
        (status = 200, description = "Kicked", body = KickAnswer),
        (status = 404, description = "not_connected", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn kick_client() {}

#[utoipa::path(put, path = "/v1/clients/{client_id}/push-tokens", tag = "clients",
    params(("client_id" = String, Path)),
    request_body = crate::push_tokens::TokenRequest,
    responses(
        (status = 200, description = "Registered (or renewed); at most 10 per client, the oldest go", body = crate::push_tokens::TokenAnswer),
        (status = 400, description = "bad_push_token, bad_client_id", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn register_push_token() {}

#[utoipa::path(get, path = "/v1/clients/{client_id}/push-tokens", tag = "clients",
    params(("client_id" = String, Path)),
    responses(
        (status = 200, description = "The client's live push tokens, newest first", body = crate::push_tokens::TokensAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn push_tokens() {}

#[utoipa::path(delete, path = "/v1/clients/{client_id}/push-tokens", tag = "clients",
    params(("client_id" = String, Path)),
    request_body = crate::push_tokens::TokenRequest,
    responses(
        (status = 200, description = "`removed` says whether it was there", body = crate::push_tokens::TokenAnswer),
        (status = 400, description = "bad_push_token", body = ErrorAnswer),
        (status = 401, description = "Missing or wrong API key", body = ErrorAnswer),
    ),
    security(("api_key" = [])))]
#[allow(dead_code)]
fn remove_push_token() {}

#[utoipa::path(get, path = "/v1/nodes", tag = "dispatch",
    responses((status = 200, description = "Access nodes to connect to; no key needed", body = NodesAnswer)))]
#[allow(dead_code)]
fn nodes() {}

/// The bearer API key of `downstream.api_keys`.
struct ApiKey;

impl Modify for ApiKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Duplex push API", description = "For backends: push to clients, look up messages and clients (docs/API.md)."),
    paths(push, push_batch, message_status, client_info, kick_client, register_push_token, push_tokens, remove_push_token, nodes),
    components(schemas(PushRequest, BatchRequest, PushResponse, ItemResult, ItemError, ErrorAnswer, BatchAnswer, BatchResult,
        MessageStatusAnswer, KickAnswer, NodesAnswer, DispatchNode, crate::push_tokens::TokenRequest,
        crate::push_tokens::TokenAnswer, crate::push_tokens::TokensAnswer, crate::push_tokens::TokenView)),
    modifiers(&ApiKey)
)]
struct PushApi;

/// The document as served, rendered once.
pub(crate) static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = PushApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_json().unwrap_or_default()
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema's property names, as the document says.
    fn properties(schema: &str) -> Vec<String> {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).expect("json");
        let mut names: Vec<String> = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("{schema} in the document"))
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    fn keys(v: serde_json::Value) -> Vec<String> {
        let mut names: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn schemas_written_here_match_what_the_code_writes() {
        let status = duplex_store::MessageStatus {
            message_id: "m".into(),
            client_id: "c".into(),
            seq: 1,
            state: duplex_store::MessageState::Sent,
            created_at: 1,
            expires_at: 2,
            sent_at: Some(1),
            acked_at: None,
            expired_at: None,
            fallback_at: Some(3),
            fallback: Some("fcm:sent".into()),
        };
        assert_eq!(
            keys(serde_json::to_value(status).expect("json")),
            properties("MessageStatusAnswer")
        );
        let error = crate::error::ErrorBody {
            code: "c",
            message: "m",
        };
        assert_eq!(
            keys(serde_json::to_value(error).expect("json")),
            properties("ErrorAnswer")
        );
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).expect("json");
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")),
            "{}",
            doc["openapi"]
        );
    }
}
