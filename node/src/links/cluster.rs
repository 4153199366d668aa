//! Nodes reaching each other: a `NodeLink` that hands frames to the local
//! hub when the route names this node and otherwise calls the named node's
//! internal listener (found in the registry), and that listener's routes.
//!
//! Internal calls carry the shared `registry.internal_secret` as a bearer
//! token and a frame in its wire encoding. A node that does not answer, or
//! answers that the client is not there, is a delivery failure: downstream
//! retries through a fresh route, never counts it as delivered.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duplex_access::{Hub, LocalNodes};
use duplex_shared::links::{LinkError, NodeLink};
use duplex_shared::protocol::{decode_body, encode_body, Frame, Limits};
use duplex_shared::secrets::constant_time_eq;
use duplex_store::Route;
use serde::Deserialize;

use super::peers::Peers;

pub struct ClusterNodes {
    node_id: String,
    hub: Arc<Hub>,
    local: LocalNodes,
    peers: Arc<Peers>,
    http: reqwest::Client,
    secret: String,
}

/// The client for internal calls; `timeout` bounds a whole call. With
/// `ca_pem`, `https://` peers' certificates are checked against that CA.
pub fn internal_http(timeout: Duration, ca_pem: Option<&[u8]>) -> Result<reqwest::Client, reqwest::Error> {
    let mut builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .timeout(timeout)
        .pool_max_idle_per_host(64);
    if let Some(ca) = ca_pem {
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(ca)?);
    }
    builder.build()
}

impl ClusterNodes {
    /// `hub` holds this node's connections (none on a node without the access tier).
    pub fn new(hub: Arc<Hub>, peers: Arc<Peers>, secret: &str, ca_pem: Option<&[u8]>) -> Result<Self, reqwest::Error> {
        Ok(ClusterNodes {
            node_id: hub.node_id().to_owned(),
            local: LocalNodes::new(hub.clone()),
            hub,
            peers,
            http: internal_http(Duration::from_secs(3), ca_pem)?,
            secret: secret.to_owned(),
        })
    }

    async fn peer(&self, node_id: &str) -> Result<String, LinkError> {
        self.peers.base_of(node_id).await
    }

    async fn call(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, LinkError> {
        let resp = req
            .bearer_auth(&self.secret)
            .send()
            .await
            .map_err(|e| LinkError::Unavailable(format!("node unreachable: {e}")))?;
        match resp.status().as_u16() {
            200..=299 => Ok(resp),
            404 => Err(LinkError::NotHere),
            429 => Err(LinkError::QueueFull),
            500 => Err(LinkError::Internal("node answered 500".into())),
            s => Err(LinkError::Unavailable(format!("node answered {s}"))),
        }
    }
}

pub(crate) fn frame_bytes(frame: &Frame) -> Vec<u8> {
    let mut body = Vec::new();
    encode_body(frame, &mut body);
    body
}

#[async_trait]
impl NodeLink for ClusterNodes {
    async fn deliver(&self, node_id: &str, client_id: &str, epoch: Option<u64>, frame: Frame) -> Result<(), LinkError> {
        if node_id == self.node_id {
            return self.local.deliver(node_id, client_id, epoch, frame).await;
        }
        let base = self.peer(node_id).await?;
        let mut query = vec![("client_id", client_id.to_owned())];
        if let Some(e) = epoch {
            query.push(("epoch", e.to_string()));
        }
        let req = self
            .http
            .post(format!("{base}/internal/v1/deliver"))
            .query(&query)
            .body(frame_bytes(&frame));
        self.call(req).await.map(drop)
    }

    async fn kick(&self, client_id: &str, route: &Route, reason: &str) -> Result<(), LinkError> {
        if route.node_id == self.node_id {
            return self.local.kick(client_id, route, reason).await;
        }
        let base = match self.peer(&route.node_id).await {
            Ok(b) => b,
            // A node gone from the registry holds no connection to kick.
            Err(_) => return Ok(()),
        };
        let req = self.http.post(format!("{base}/internal/v1/kick")).query(&[
            ("client_id", client_id),
            ("epoch", &route.conn_epoch.to_string()),
            ("reason", reason),
        ]);
        self.call(req).await.map(drop)
    }

    async fn broadcast(&self, frame: Frame) -> Result<u64, LinkError> {
        let mut total = self.hub.broadcast_local(&frame);
        let body = frame_bytes(&frame);
        let peers = self.peers.all().await?;
        let access_nodes = peers
            .iter()
            .filter(|n| n.node_id != self.node_id && n.tiers.iter().any(|t| t == "access"));
        for n in access_nodes {
            let (node, base) = (&n.node_id, &n.internal);
            let req = self
                .http
                .post(format!("{base}/internal/v1/broadcast"))
                .body(body.clone());
            match self.call(req).await {
                Ok(resp) => {
                    let v: serde_json::Value = resp.json().await.unwrap_or_default();
                    total += v["delivered"].as_u64().unwrap_or(0);
                }
                Err(e) => tracing::warn!(node, error = %e, "broadcast did not reach a node"),
            }
        }
        Ok(total)
    }

    async fn is_live(&self, node_id: &str) -> Result<bool, LinkError> {
        if node_id == self.node_id {
            return Ok(true);
        }
        Ok(self.peers.all().await?.iter().any(|n| n.node_id == node_id))
    }

    async fn connected_since(&self, client_id: &str, route: &Route) -> Result<Option<u64>, LinkError> {
        if route.node_id == self.node_id {
            return self.local.connected_since(client_id, route).await;
        }
        let base = self.peer(&route.node_id).await?;
        let req = self
            .http
            .get(format!("{base}/internal/v1/connected_since"))
            .query(&[("client_id", client_id), ("epoch", &route.conn_epoch.to_string())]);
        let v: serde_json::Value = self
            .call(req)
            .await?
            .json()
            .await
            .map_err(|e| LinkError::Unavailable(e.to_string()))?;
        Ok(v["since"].as_u64())
    }
}

struct Internal {
    hub: Arc<Hub>,
    secret: String,
    limits: Limits,
}

/// The internal listener's routes.
pub fn router(hub: Arc<Hub>, secret: &str, limits: Limits) -> Router {
    Router::new()
        .route("/internal/v1/deliver", post(deliver))
        .route("/internal/v1/kick", post(kick))
        .route("/internal/v1/broadcast", post(broadcast))
        .route("/internal/v1/connected_since", get(connected_since))
        .with_state(Arc::new(Internal {
            hub,
            secret: secret.to_owned(),
            limits,
        }))
}

/// Refuses every internal call without the secret before anything of the
/// request is parsed, so a caller without it learns nothing (not even which
/// queries or bodies would be accepted): 401, empty body.
pub(crate) fn require_secret(router: axum::Router, secret: &str) -> axum::Router {
    let secret: Arc<str> = Arc::from(secret);
    router.layer(axum::middleware::from_fn(
        move |request: axum::extract::Request, next: axum::middleware::Next| {
            let secret = secret.clone();
            async move {
                if authorized(&secret, request.headers()) {
                    next.run(request).await
                } else {
                    StatusCode::UNAUTHORIZED.into_response()
                }
            }
        },
    ))
}

pub(crate) fn authorized(secret: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), secret.as_bytes())
}

#[derive(Deserialize)]
struct Target {
    client_id: String,
    epoch: Option<u64>,
    reason: Option<String>,
}

pub(crate) fn status_of(e: &LinkError) -> StatusCode {
    match e {
        LinkError::NotHere => StatusCode::NOT_FOUND,
        LinkError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
        LinkError::Rejected(_) => StatusCode::BAD_REQUEST,
        LinkError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        LinkError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

async fn deliver(State(s): State<Arc<Internal>>, headers: HeaderMap, Query(t): Query<Target>, body: Bytes) -> Response {
    if !authorized(&s.secret, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let frame = match decode_body(&body, &s.limits) {
        Ok(f) => f,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match s.hub.deliver_local(&t.client_id, t.epoch, &frame) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => status_of(&e).into_response(),
    }
}

async fn kick(State(s): State<Arc<Internal>>, headers: HeaderMap, Query(t): Query<Target>) -> Response {
    if !authorized(&s.secret, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let Some(epoch) = t.epoch else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    s.hub
        .kick_local(&t.client_id, epoch, t.reason.as_deref().unwrap_or("admin"));
    StatusCode::NO_CONTENT.into_response()
}

async fn broadcast(State(s): State<Arc<Internal>>, headers: HeaderMap, body: Bytes) -> Response {
    if !authorized(&s.secret, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    match decode_body(&body, &s.limits) {
        Ok(frame) => Json(serde_json::json!({"delivered": s.hub.broadcast_local(&frame)})).into_response(),
        Err(e) => (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    }
}

async fn connected_since(State(s): State<Arc<Internal>>, headers: HeaderMap, Query(t): Query<Target>) -> Response {
    if !authorized(&s.secret, &headers) {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let since = s
        .hub
        .get(&t.client_id)
        .filter(|h| Some(h.conn_epoch) == t.epoch)
        .map(|h| h.connected_at_ms);
    Json(serde_json::json!({ "since": since })).into_response()
}
