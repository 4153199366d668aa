//! One admin API for the whole deployment: a call about a tier this node
//! does not run (pools and routing: upstream; client lookup and kick:
//! downstream) is sent to a live node that runs it, over the internal
//! listener (its secret, its TLS), and that node's answer comes back as is.
//! The caller's role travels in a header the receiving node trusts only
//! behind the internal secret; a forwarded call is never forwarded again.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{error, Admin, Role};

/// Where a forwarded admin call arrives on the internal listener.
pub const INTERNAL_PREFIX: &str = "/internal/v1/admin";
/// The caller's role, set by the forwarding node.
pub const ROLE_HEADER: &str = "x-duplex-admin-role";
/// Marks a call that was forwarded once already.
const FORWARDED_HEADER: &str = "x-duplex-forwarded";
/// A peer that does not answer within this is reported as unavailable.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Request bodies of the admin API (routing changes) are far below this.
const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// How this node reaches its peers' internal listeners.
#[derive(Clone)]
pub struct Forwarder {
    pub client: reqwest::Client,
    pub secret: String,
}

impl Forwarder {
    /// A call to `path` of the admin API on the peer whose internal listener
    /// is `internal`, as `role`, marked as forwarded.
    fn call(
        &self,
        method: axum::http::Method,
        internal: &str,
        path: &str,
        role: Role,
        timeout: Duration,
    ) -> reqwest::RequestBuilder {
        let url = format!("{}{INTERNAL_PREFIX}{path}", internal.trim_end_matches('/'));
        self.client
            .request(method, url)
            .bearer_auth(&self.secret)
            .header(ROLE_HEADER, role.label())
            .header(FORWARDED_HEADER, "1")
            .timeout(timeout)
    }
}

/// The tier an admin API path is about, if it is about one.
pub fn tier_of(path: &str) -> Option<&'static str> {
    if path.starts_with("/admin/v1/pools") || path.starts_with("/admin/v1/routing") {
        Some("upstream")
    } else if path.starts_with("/admin/v1/clients") {
        Some("downstream")
    } else {
        None
    }
}

/// Middleware of the admin API: a call about a tier this node does not run
/// goes to a node that does (after the caller's token was checked here).
pub async fn middleware(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let Some(tier) = tier_of(request.uri().path()) else {
        return next.run(request).await;
    };
    if admin.tiers.contains(&tier) || request.headers().contains_key(FORWARDED_HEADER) {
        return next.run(request).await;
    }
    let need = if request.method() == axum::http::Method::GET {
        Role::Read
    } else {
        Role::Admin
    };
    let role = match super::role(&admin, request.headers(), need) {
        Ok(role) => role,
        Err(refused) => return *refused,
    };
    forward(&admin, tier, role, request).await
}

async fn forward(admin: &Admin, tier: &str, role: Role, request: Request) -> Response {
    let Some(forwarder) = &admin.forwarder else {
        return super::tier_not_here(admin, tier);
    };
    let nodes = match admin.store.nodes(duplex_store::now_ms()).await {
        Ok(n) => n,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    };
    let Some(peer) = nodes
        .iter()
        .find(|n| n.node_id != admin.node_id && n.tiers.iter().any(|t| t == tier) && !n.internal.is_empty())
    else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "tier_unavailable",
            format!("no live node runs the {tier} tier"),
        );
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, super::MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "admin request body too large",
            )
        }
    };
    let path = parts.uri.path_and_query().map_or(parts.uri.path(), |p| p.as_str());
    let mut call = forwarder
        .call(parts.method.clone(), &peer.internal, path, role, TIMEOUT)
        .body(body);
    if let Some(kind) = parts.headers.get(header::CONTENT_TYPE) {
        call = call.header(header::CONTENT_TYPE, kind.clone());
    }
    let answer = match call.send().await {
        Ok(a) => a,
        Err(e) => {
            return error(
                StatusCode::BAD_GATEWAY,
                "peer_unavailable",
                format!("node {} ({tier}) did not answer: {e}", peer.node_id),
            )
        }
    };
    let status = answer.status();
    let kind = answer.headers().get(header::CONTENT_TYPE).cloned();
    match read_bounded(answer).await {
        Some(bytes) => {
            let mut response = (status, Body::from(bytes)).into_response();
            if let Some(kind) = kind {
                response.headers_mut().insert(header::CONTENT_TYPE, kind);
            }
            response.headers_mut().insert(
                "x-duplex-answered-by",
                HeaderValue::from_str(&peer.node_id).unwrap_or(HeaderValue::from_static("peer")),
            );
            response
        }
        None => error(
            StatusCode::BAD_GATEWAY,
            "peer_unavailable",
            "the peer's answer was too large or cut",
        ),
    }
}

async fn read_bounded(mut answer: reqwest::Response) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = answer.chunk().await {
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

/// Middleware in front of the admin API on the internal listener (behind
/// the internal secret): the forwarding node's role becomes this node's
/// token for that role, so the handlers check it as for a local call.
pub async fn receive(State(admin): State<Arc<Admin>>, mut request: Request, next: Next) -> Response {
    let role = request
        .headers()
        .get(ROLE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(Role::parse);
    let reading = request.method() == axum::http::Method::GET;
    // The forwarding node checked the caller's token; a read-only caller only
    // ever reads, so a read may run on this node's admin token if it has no
    // read-only one. A node without tokens (loopback) needs none.
    let token = match role {
        Some(Role::Admin) => admin.token.clone(),
        Some(Role::Read) if reading => admin.read_token.clone().or_else(|| admin.token.clone()),
        Some(Role::Read) => return super::read_only_refusal(),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "no_role",
                "forwarded admin call without a role",
            )
        }
    };
    let headers = request.headers_mut();
    headers.remove(header::AUTHORIZATION);
    if let Some(value) = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {t}")).ok()) {
        headers.insert(header::AUTHORIZATION, value);
    }
    next.run(request).await
}

/// `GET path` of the admin API on one peer, as `role`; its JSON answer, or
/// `None` if it did not answer well within `timeout`.
pub async fn get_json(
    forwarder: &Forwarder,
    internal: &str,
    path: &str,
    role: Role,
    timeout: Duration,
) -> Option<serde_json::Value> {
    let answer = forwarder
        .call(axum::http::Method::GET, internal, path, role, timeout)
        .send()
        .await
        .ok()?;
    if !answer.status().is_success() {
        return None;
    }
    serde_json::from_slice(&read_bounded(answer).await?).ok()
}

/// The admin API as the internal listener serves it to forwarding nodes.
pub fn receiving(admin: Arc<Admin>) -> axum::Router {
    super::api_router(admin.clone()).layer(axum::middleware::from_fn_with_state(admin, receive))
}
