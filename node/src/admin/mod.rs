//! The node's admin listener: Prometheus `/metrics`, liveness `/healthz`,
//! readiness `/readyz`, and the admin API (`/admin/v1/...`: backend pools,
//! isolate and recover an endpoint). It binds only the admin address, never
//! a client or backend port; changing calls need `admin.token` when one is set.
//!
//! Ready means: the store answers (within a second), the node's registry
//! lease is fresh, and the node is not draining. A load balancer or Kubernetes stops sending new clients to a node
//! that is not ready.

pub(crate) mod forward;
mod guard;
mod openapi;
mod totals;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use duplex_downstream::{ApiError, Clients};

use duplex_shared::metrics::Metrics;
use duplex_store::Store;
use duplex_upstream::{AdminError, Upstream};
use guard::AdminGuard;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct Admin {
    pub node_id: String,
    pub store_kind: &'static str,
    pub started: std::time::Instant,
    /// The tiers this node runs; calls about a tier it does not run get 404.
    pub tiers: Vec<&'static str>,
    pub clients: Option<Clients>,
    pub metrics: Arc<Metrics>,
    pub store: Arc<dyn Store>,
    pub upstream: Option<Arc<Upstream>>,
    /// Required as `Authorization: Bearer` by changing calls, when set.
    pub token: Option<String>,
    /// Lets its bearer read the admin API, change nothing (`admin.read_token`).
    pub read_token: Option<String>,
    /// Reaches the nodes running the tiers this one does not (`forward.rs`).
    pub forwarder: Option<forward::Forwarder>,
    /// Cancelled when the node drains: readiness turns false at once.
    pub draining: CancellationToken,
    /// When this node last renewed its registry entry.
    pub registry: crate::registry::Freshness,
    pub lease_ms: u64,
}

/// Admin request bodies (routing changes) stay far below this.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// The admin API's routes (`/admin/v1/...`, `/openapi.json`), each checking
/// the caller's token: served on the admin listener, and behind the internal
/// secret on the internal listener for calls other nodes forward (`forward.rs`).
pub fn api_router(admin: Arc<Admin>) -> Router {
    Router::new()
        .route("/openapi.json", get(openapi_document))
        .route("/admin/v1/whoami", get(whoami))
        .route("/admin/v1/nodes", get(nodes))
        .route("/admin/v1/totals", get(totals::totals))
        .route("/admin/v1/clients/{client_id}", get(client).delete(kick))
        .route("/admin/v1/users/{user_id}/clients", get(user_clients))
        .route("/admin/v1/queues", get(queues))
        .route("/admin/v1/pools", get(pools))
        .route("/admin/v1/routing", get(routing))
        .route(
            "/admin/v1/routing/services/{name}",
            axum::routing::put(put_service).delete(delete_service),
        )
        .route("/admin/v1/pools/{service}/endpoints/{endpoint}/isolate", post(isolate))
        .route("/admin/v1/pools/{service}/endpoints/{endpoint}/recover", post(recover))
        .with_state(admin)
}

/// Serves until `stop` is cancelled.
pub async fn serve(listener: TcpListener, admin: Arc<Admin>, limits: duplex_http::HttpLimits, stop: CancellationToken) {
    let token_set = admin.token.is_some();
    let api = api_router(admin.clone()).layer(axum::middleware::from_fn_with_state(admin.clone(), forward::middleware));
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/", get(|| async { axum::response::Redirect::to("/dashboard") }))
        .route("/dashboard", get(dashboard))
        .with_state(admin)
        .merge(api);
    let app = match listener.local_addr() {
        Ok(bound) => app.layer(axum::middleware::from_fn_with_state(
            Arc::new(AdminGuard { bound, token_set }),
            guard::middleware,
        )),
        Err(e) => {
            tracing::error!(error = %e, "admin listener has no address");
            return;
        }
    };
    duplex_http::serve(listener, app, limits, stop).await;
}

async fn metrics_text(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, duplex_shared::metrics::CONTENT_TYPE)],
        admin.metrics.render(),
    )
}

async fn readyz(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    let store = match tokio::time::timeout(Duration::from_secs(1), admin.store.ping()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("store did not answer within 1 s".to_owned()),
    };
    let draining = admin.draining.is_cancelled();
    let registered = admin.registry.fresh(admin.lease_ms);
    let ready = store.is_ok() && !draining && registered;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "store": store.err().unwrap_or_else(|| "ok".to_owned()),
        "draining": draining,
        "registry": if registered { "ok" } else { "this node's registry lease is not fresh" },
    });
    (status, Json(body))
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({"code": code, "message": message.into()})),
    )
        .into_response()
}

/// What a caller's token lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `admin.read_token`: every read of the admin API, no change.
    Read,
    /// `admin.token` (or no token set, on loopback): everything.
    Admin,
}

impl Role {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// The caller's role if it may make a call that needs `need`, else the
/// 401 (no or a wrong token) or 403 (the read-only token, for a change) to send.
pub(crate) fn role(admin: &Admin, headers: &HeaderMap, need: Role) -> Result<Role, Box<Response>> {
    let Some(expected) = admin.token.as_ref() else {
        return Ok(Role::Admin);
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let matches = |token: &str| duplex_shared::secrets::constant_time_eq(given.as_bytes(), token.as_bytes());
    if matches(expected) {
        return Ok(Role::Admin);
    }
    if admin.read_token.as_deref().is_some_and(matches) {
        return match need {
            Role::Read => Ok(Role::Read),
            Role::Admin => Err(Box::new(read_only_refusal())),
        };
    }
    Err(Box::new(error(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "send the admin token (or, to read, the read-only token) as `Authorization: Bearer <token>`",
    )))
}

pub(crate) fn read_only_refusal() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden",
        "the read-only token cannot change anything; use the admin token",
    )
}

/// `None` when the call may go on, else the 401 or 403 to send.
fn refused(admin: &Admin, headers: &HeaderMap, need: Role) -> Option<Response> {
    role(admin, headers, need).err().map(|refusal| *refusal)
}

/// `GET /admin/v1/whoami`: the caller's role, so the dashboard shows only what it may do.
async fn whoami(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    match role(&admin, &headers, Role::Read) {
        Ok(r) => Json(serde_json::json!({ "role": r.label(), "node_id": admin.node_id })).into_response(),
        Err(refusal) => *refusal,
    }
}

/// The web dashboard: one static page (no build step) driving the admin API
/// with the token the operator types in (kept in the tab's session storage).
async fn dashboard() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("dashboard/index.html"),
    )
}

/// The nodes of the deployment: this one (the registry of many is the scale-out work).
/// Every node in the registry (live leases) with its load; this node adds
/// its uptime, transports and drain state.
async fn nodes(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    let registered = match admin.store.nodes(duplex_store::now_ms()).await {
        Ok(n) => n,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    };
    let gauge = |transport| {
        admin
            .metrics
            .counter("duplex_connections", &[("transport", transport)])
            .get()
    };
    let mut nodes: Vec<serde_json::Value> = registered
        .into_iter()
        .map(|n| {
            let mut v = serde_json::json!({
                "node_id": n.node_id,
                "tiers": n.tiers,
                "tcp": n.tcp,
                "ws": n.ws,
                "region": n.region,
                "connections": {"total": n.connections},
                "max_connections": n.max_connections,
                "lease_expires_at": n.expires_ms,
            });
            if v["node_id"] == admin.node_id.as_str() {
                v["this_node"] = true.into();
            }
            v
        })
        .collect();
    // This node, with what only it knows (also while its lease is not written).
    let here = nodes.iter().position(|n| n["node_id"] == admin.node_id.as_str());
    let index = here.unwrap_or_else(|| {
        nodes.push(serde_json::json!({"node_id": admin.node_id, "tiers": admin.tiers, "this_node": true}));
        nodes.len() - 1
    });
    let this = &mut nodes[index];
    this["store"] = admin.store_kind.into();
    this["uptime_s"] = admin.started.elapsed().as_secs().into();
    this["connections"] = serde_json::json!({
        "total": gauge("tcp") + gauge("ws"),
        "tcp": gauge("tcp"),
        "ws": gauge("ws"),
    });
    this["draining"] = admin.draining.is_cancelled().into();
    Json(serde_json::json!({ "nodes": nodes })).into_response()
}

/// Queues looked at per overview: the answer is a sample beyond this many clients.
const OVERVIEW_SCAN: usize = 10_000;

#[derive(serde::Deserialize)]
struct QueuesQuery {
    limit: Option<usize>,
}

/// Top clients by pending messages, and every service's spool depth.
async fn queues(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<QueuesQuery>,
) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    let limit = q.limit.unwrap_or(20).clamp(1, 1_000);
    let overview = match admin.store.overview(limit, OVERVIEW_SCAN).await {
        Ok(o) => o,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    };
    let mut spools = serde_json::Map::new();
    let services = admin.upstream.as_ref().map(|u| u.routing()).unwrap_or_default();
    for service in services.keys() {
        match admin.store.spool_len(service).await {
            Ok(n) => spools.insert(service.clone(), n.into()),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
        };
    }
    Json(serde_json::json!({ "clients": overview, "spools": spools })).into_response()
}

pub(crate) fn tier_not_here(admin: &Admin, tier: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "tier_not_here",
        format!("node {} runs {:?}, not the {tier} tier", admin.node_id, admin.tiers),
    )
}

fn upstream_of(admin: &Admin) -> Result<&Arc<Upstream>, Box<Response>> {
    admin
        .upstream
        .as_ref()
        .ok_or_else(|| Box::new(tier_not_here(admin, "upstream")))
}

fn clients_of(admin: &Admin) -> Result<&Clients, Box<Response>> {
    admin
        .clients
        .as_ref()
        .ok_or_else(|| Box::new(tier_not_here(admin, "downstream")))
}

fn api_error(e: ApiError) -> Response {
    error(e.status, e.code, e.message)
}

async fn client(State(admin): State<Arc<Admin>>, headers: HeaderMap, Path(client_id): Path<String>) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    let clients = match clients_of(&admin) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match clients.info(client_id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => api_error(e),
    }
}

/// Clients listed per user at most.
const USER_CLIENTS_MAX: usize = 1_000;

/// `GET /admin/v1/users/{user_id}/clients`: the client ids the user
/// connected in the last day, each with where it is connected now; read from
/// the store, so any node answers.
async fn user_clients(State(admin): State<Arc<Admin>>, headers: HeaderMap, Path(user_id): Path<String>) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    let unavailable =
        |e: duplex_store::StoreError| error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string());
    let mut ids = match admin.store.user_clients(&user_id).await {
        Ok(ids) => ids,
        Err(e) => return unavailable(e),
    };
    ids.sort();
    let truncated = ids.len() > USER_CLIENTS_MAX;
    ids.truncate(USER_CLIENTS_MAX);
    let routes = futures_util::future::join_all(ids.iter().map(|id| admin.store.get_route(id))).await;
    let mut clients = Vec::with_capacity(ids.len());
    for (id, route) in ids.into_iter().zip(routes) {
        let route = match route {
            Ok(r) => r,
            Err(e) => return unavailable(e),
        };
        clients.push(serde_json::json!({
            "client_id": id,
            "online": route.is_some(),
            "node_id": route.map(|r| r.node_id),
        }));
    }
    Json(serde_json::json!({ "user_id": user_id, "clients": clients, "truncated": truncated })).into_response()
}

async fn kick(State(admin): State<Arc<Admin>>, headers: HeaderMap, Path(client_id): Path<String>) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Admin) {
        return r;
    }
    let clients = match clients_of(&admin) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    match clients.kick(client_id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => api_error(e),
    }
}

/// The admin API's OpenAPI 3.1 document, behind the admin token like the API.
async fn openapi_document(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    ([(header::CONTENT_TYPE, "application/json")], openapi::DOCUMENT.as_str()).into_response()
}

async fn pools(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    match upstream_of(&admin) {
        Ok(upstream) => Json(serde_json::json!({ "pools": upstream.pools() })).into_response(),
        Err(r) => *r,
    }
}

async fn isolate(state: State<Arc<Admin>>, headers: HeaderMap, path: Path<(String, String)>) -> Response {
    set_isolated(state, headers, path, true).await
}

async fn recover(state: State<Arc<Admin>>, headers: HeaderMap, path: Path<(String, String)>) -> Response {
    set_isolated(state, headers, path, false).await
}

/// `endpoint` is the endpoint's index in the service's list or its URL (percent-encoded in the path).
async fn set_isolated(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path((service, endpoint)): Path<(String, String)>,
    isolated: bool,
) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Admin) {
        return r;
    }
    let upstream = match upstream_of(&admin) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    match upstream.set_isolated(&service, &endpoint, isolated).await {
        Ok(()) => Json(serde_json::json!({
            "service": service,
            "endpoint": endpoint,
            "isolated": isolated,
        }))
        .into_response(),
        Err(e) => admin_error(e),
    }
}

fn admin_error(e: AdminError) -> Response {
    match e {
        AdminError::UnknownService(_) | AdminError::UnknownEndpoint { .. } => {
            error(StatusCode::NOT_FOUND, "not_found", e.to_string())
        }
        AdminError::Invalid(_) => error(StatusCode::BAD_REQUEST, "invalid_config", e.to_string()),
        AdminError::Store(_) => error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    }
}

async fn routing(State(admin): State<Arc<Admin>>, headers: HeaderMap) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    match upstream_of(&admin) {
        Ok(upstream) => Json(serde_json::json!({ "services": upstream.routing() })).into_response(),
        Err(r) => *r,
    }
}

/// Adds or replaces a service; the body is a service table as in the config file, as JSON.
async fn put_service(
    State(admin): State<Arc<Admin>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Admin) {
        return r;
    }
    let service = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                format!("service {name:?}: {e}"),
            )
        }
    };
    let upstream = match upstream_of(&admin) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    match upstream.set_service(&name, Some(service)).await {
        Ok(()) => Json(serde_json::json!({ "service": name, "changed": true })).into_response(),
        Err(e) => admin_error(e),
    }
}

async fn delete_service(State(admin): State<Arc<Admin>>, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Admin) {
        return r;
    }
    let upstream = match upstream_of(&admin) {
        Ok(u) => u,
        Err(r) => return *r,
    };
    match upstream.set_service(&name, None).await {
        Ok(()) => Json(serde_json::json!({ "service": name, "removed": true })).into_response(),
        Err(e) => admin_error(e),
    }
}

/// Measures the store's round trip every 2 s (Redis latency as operators see
/// it), and the pending backlog every 20 s.
pub async fn probe_store(store: Arc<dyn Store>, metrics: Arc<Metrics>, stop: CancellationToken) {
    let latency = metrics.histogram("duplex_store_ping_seconds", &[]);
    let errors = metrics.counter("duplex_store_errors_total", &[("tier", "probe")]);
    let pending = metrics.counter("duplex_pending_messages", &[]);
    let pending_bytes = metrics.counter("duplex_pending_bytes", &[]);
    for round in 0u64.. {
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(Duration::from_secs(2), store.ping()).await {
            Ok(Ok(())) => latency.observe(started.elapsed()),
            _ => errors.inc(),
        }
        if round % 10 == 0 {
            if let Ok(Ok(o)) = tokio::time::timeout(Duration::from_secs(5), store.overview(1, OVERVIEW_SCAN)).await {
                pending.add(o.pending as i64 - pending.get());
                pending_bytes.add(o.pending_bytes as i64 - pending_bytes.get());
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}
