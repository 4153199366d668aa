//! The HTTP API for backends (see `docs/API.md`): push, batch push, message
//! status, client lookup and kick. Every route needs an API key.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duplex_shared::protocol::valid_client_id;
use duplex_store::parse_message_id;
use serde::Serialize;
use tracing::Instrument;

use crate::error::{ApiError, ErrorBody};
use crate::push::PushResponse;
use crate::request::{parse_json, BatchRequest, PushRequest, ValidPush};
use crate::{now_ms, Shared};

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let limit = shared.config.max_body_bytes as usize;
    Router::new()
        .route("/v1/nodes", get(nodes))
        .route("/openapi.json", get(openapi_document))
        .route("/v1/push", post(push))
        .route("/v1/push/batch", post(push_batch))
        .route("/v1/messages/{id}", get(message_status))
        .route("/v1/clients/{client_id}", get(client_info).delete(kick_client))
        .route(
            "/v1/clients/{client_id}/push-tokens",
            get(crate::push_tokens::list)
                .put(crate::push_tokens::register)
                .delete(crate::push_tokens::remove),
        )
        .fallback(|| async { ApiError::not_found("no_route", "no such endpoint") })
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(in_request_span))
        .with_state(shared)
}

/// Every log line of a call, refusals included, carries the caller's trace
/// id (from `traceparent`) when it sent one: JSON logs show it in `span`.
async fn in_request_span(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let trace_id = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(duplex_shared::trace::trace_id)
        .map(str::to_owned);
    let span = tracing::info_span!(
        "push_api",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = trace_id.as_deref()
    );
    let caller = request.headers().get("traceparent").and_then(|v| v.to_str().ok());
    duplex_shared::trace::continue_from(&span, caller);
    next.run(request).instrument(span).await
}

fn authorize(shared: &Shared, headers: &HeaderMap) -> Result<(), ApiError> {
    let presented = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    // Every key is compared, so the time taken does not depend on which one matches.
    let ok = shared.config.api_keys.iter().fold(false, |acc, k| {
        acc | duplex_shared::secrets::constant_time_eq(k.as_bytes(), presented.as_bytes())
    });
    ok.then_some(()).ok_or_else(ApiError::unauthorized)
}

fn body_too_large(body: &Bytes, shared: &Shared) -> Result<(), ApiError> {
    if body.len() > shared.config.max_body_bytes as usize {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "request body too large",
        ));
    }
    Ok(())
}

/// Counts a failed push call by code (and store failures as store errors).
fn count_failure<T>(shared: &Shared, result: Result<T, ApiError>) -> Result<T, ApiError> {
    if let Err(e) = &result {
        // A full queue was counted where it refused its target (once per
        // refusal, in batches too); this is the same refusal as a 429.
        if e.code != "queue_full" {
            shared.metrics.inc("duplex_pushes_rejected_total", &[("code", e.code)]);
        }
        if e.code == "store_unavailable" {
            shared
                .metrics
                .inc("duplex_store_errors_total", &[("tier", "downstream")]);
        }
    }
    result
}

async fn push(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let result = push_inner(&shared, &headers, &body).await;
    count_failure(&shared, result)
}

async fn push_inner(shared: &Shared, headers: &HeaderMap, body: &Bytes) -> Result<Response, ApiError> {
    authorize(shared, headers)?;
    body_too_large(body, shared)?;
    let request: PushRequest = parse_json(body)?;
    let mut valid = request.validate(&shared.config)?;
    let trace = traceparent(headers);
    with_trace(&mut valid, outgoing_trace(trace.as_deref()).as_deref());
    let span = tracing::info_span!(
        "push",
        trace_id = trace.as_deref().and_then(duplex_shared::trace::trace_id)
    );
    let response = shared.push(valid).instrument(span).await?;
    Ok((StatusCode::ACCEPTED, Json(response)).into_response())
}

/// Public dispatch for clients: the access nodes to connect to, weighted by
/// free capacity. No key: apps call it before they connect.
async fn nodes(State(shared): State<Arc<Shared>>) -> Result<Response, ApiError> {
    let nodes: Vec<serde_json::Value> = shared
        .store
        .nodes(now_ms())
        .await?
        .into_iter()
        .filter(|n| n.tiers.iter().any(|t| t == "access"))
        .map(|n| {
            let free = n.max_connections.saturating_sub(n.connections);
            let weight = (free * 100).checked_div(n.max_connections).unwrap_or(0).max(1);
            serde_json::json!({
                "node_id": n.node_id,
                "tcp": n.tcp,
                "ws": n.ws,
                "tls": n.tls,
                "wss": n.wss,
                "region": n.region,
                "weight": weight,
            })
        })
        .collect();
    // Public and the same for everyone: web apps on any origin may read it (a plain GET, so
    // browsers send no preflight and this one header is all CORS needs).
    let anyone = [(axum::http::header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")];
    Ok((anyone, Json(serde_json::json!({ "nodes": nodes }))).into_response())
}

/// The API's OpenAPI 3.1 document; public, like the API's documentation.
async fn openapi_document() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        crate::openapi::DOCUMENT.as_str(),
    )
        .into_response()
}

/// The caller's `traceparent`, when it is a valid one.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let t = headers.get("traceparent")?.to_str().ok()?;
    duplex_shared::trace::trace_id(t).map(|_| t.to_owned())
}

/// Carries the backend's trace to the client in the push headers (unless the
/// push sets its own), so an app can log against the same trace; with trace
/// export on, every push carries the `push_api` span's, so the access node's
/// `ack` span joins the trace.
fn with_trace(push: &mut ValidPush, traceparent: Option<&str>) {
    if let Some(t) = traceparent {
        push.headers.entry("traceparent".into()).or_insert_with(|| t.to_owned());
    }
}

/// The `traceparent` pushes of this call carry (see `with_trace`).
fn outgoing_trace(caller: Option<&str>) -> Option<String> {
    duplex_shared::trace::current_traceparent()
        .or_else(|| caller.map(|t| duplex_shared::trace::child_traceparent(Some(t))))
}

/// One answer of a batch: the status, then the push's answer or its error,
/// serialized once straight into the response.
#[derive(Serialize)]
struct BatchItem<'a> {
    status: u16,
    #[serde(flatten)]
    body: BatchItemBody<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum BatchItemBody<'a> {
    Accepted(&'a PushResponse),
    Refused(ErrorBody<'a>),
}

#[derive(Serialize)]
struct BatchResponse<'a> {
    results: Vec<BatchItem<'a>>,
}

async fn push_batch(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let result = push_batch_inner(&shared, &headers, body).await;
    count_failure(&shared, result)
}

async fn push_batch_inner(shared: &Shared, headers: &HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    authorize(shared, headers)?;
    body_too_large(&body, shared)?;
    let batch: BatchRequest = parse_json(&body)?;
    if batch.pushes.is_empty() || batch.pushes.len() > shared.config.max_batch {
        return Err(ApiError::bad(
            "bad_batch",
            format!("a batch holds 1..={} pushes", shared.config.max_batch),
        ));
    }
    // All items are validated first: one bad item stores nothing at all.
    let valid = batch
        .pushes
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            p.validate(&shared.config).map_err(|e| ApiError {
                message: format!("pushes[{i}]: {}", e.message),
                ..e
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let trace = outgoing_trace(traceparent(headers).as_deref());
    let mut valid = valid;
    for p in &mut valid {
        with_trace(p, trace.as_deref());
    }
    // Boxed: a push's future is ~1.8 KB, and the join moves each one it
    // holds (a measurable share of the node's CPU in batched runs).
    let results = futures_util::future::join_all(valid.into_iter().map(|p| Box::pin(shared.push(p)))).await;
    let results = results
        .iter()
        .map(|r| match r {
            Ok(resp) => BatchItem {
                status: 202,
                body: BatchItemBody::Accepted(resp),
            },
            Err(e) => BatchItem {
                status: e.status.as_u16(),
                body: BatchItemBody::Refused(ErrorBody {
                    code: e.code,
                    message: &e.message,
                }),
            },
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(BatchResponse { results })).into_response())
}

async fn message_status(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers)?;
    let (client_id, seq, nonce) =
        parse_message_id(&id).ok_or_else(|| ApiError::not_found("unknown_message", "no message has this id"))?;
    let status = shared
        .store
        .message_status(client_id, seq, nonce, now_ms())
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_message", "no message has this id (or its status expired)"))?;
    Ok(Json(status).into_response())
}

/// `GET /v1/clients/{client_id}`: route and queue of one client.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct ClientInfo {
    client_id: String,
    online: bool,
    node_id: Option<String>,
    connected_since: Option<u64>,
    pending: u64,
    pending_bytes: u64,
    last_acked_seq: u64,
    expired: u64,
}

fn check_client_id(id: &str) -> Result<(), ApiError> {
    if valid_client_id(id) {
        Ok(())
    } else {
        Err(ApiError::bad(
            "bad_client_id",
            "client ids are 1..=128 of [A-Za-z0-9._:-]",
        ))
    }
}

/// The common start of the client endpoints: key, client id, current route.
pub(crate) async fn authorize_client_call(
    shared: &Shared,
    headers: &HeaderMap,
    client_id: &str,
) -> Result<(), ApiError> {
    authorize(shared, headers)?;
    check_client_id(client_id)
}

async fn client_info(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    authorize_client_call(&shared, &headers, &client_id).await?;
    Ok(Json(shared.client_info(client_id).await?).into_response())
}

async fn kick_client(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(client_id): Path<String>,
) -> Result<Response, ApiError> {
    authorize_client_call(&shared, &headers, &client_id).await?;
    Ok(Json(shared.kick(client_id).await?).into_response())
}

impl Shared {
    /// Where a client is connected and what waits for it.
    pub(crate) async fn client_info(&self, client_id: String) -> Result<ClientInfo, ApiError> {
        check_client_id(&client_id)?;
        let mut route = self.store.get_route(&client_id).await?;
        if let Some(r) = &route {
            // A route outlives a killed node by its lease; the registry knows sooner.
            if !self.nodes.is_live(&r.node_id).await.unwrap_or(true) {
                route = None;
            }
        }
        let since = match &route {
            Some(r) => self.nodes.connected_since(&client_id, r).await.ok().flatten(),
            None => None,
        };
        let queue = self.store.queue_info(&client_id, now_ms()).await?;
        Ok(ClientInfo {
            online: route.is_some(),
            node_id: route.map(|r| r.node_id),
            connected_since: since,
            pending: queue.pending,
            pending_bytes: queue.pending_bytes,
            last_acked_seq: queue.last_acked_seq,
            expired: queue.expired,
            client_id,
        })
    }

    /// Closes the client's connection with `kicked` (reason `admin`).
    pub(crate) async fn kick(&self, client_id: String) -> Result<serde_json::Value, ApiError> {
        check_client_id(&client_id)?;
        let route = self
            .store
            .get_route(&client_id)
            .await?
            .ok_or_else(|| ApiError::not_found("not_connected", "the client is not connected"))?;
        self.nodes
            .kick(&client_id, &route, "admin")
            .await
            .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "node_unavailable", e.to_string()))?;
        Ok(serde_json::json!({"client_id": client_id, "kicked": true, "node_id": route.node_id}))
    }
}
