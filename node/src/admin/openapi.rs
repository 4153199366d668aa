//! The admin API's OpenAPI 3.1 document, served at `GET /openapi.json` on the
//! admin listener (behind the same token and guard as the API). The routing
//! table's service schema is the configuration's own type; answers built as
//! JSON in the handlers are described as objects (docs/OPERATIONS.md has
//! their fields). tests/openapi.rs checks every call of OPERATIONS.md's
//! admin table is here.

use std::sync::LazyLock;

use duplex_upstream::config::{EndpointConfig, ServiceConfig};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// `{code, message}`: every error answer.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorAnswer {
    code: String,
    message: String,
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format (docs/OPERATIONS.md, Metrics)", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn metrics() {}

#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = String, content_type = "text/plain")))]
#[allow(dead_code)]
fn healthz() {}

#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Store reachable, registered, not draining", body = serde_json::Value),
        (status = 503, description = "Not ready, with the reason per check", body = serde_json::Value),
    ))]
#[allow(dead_code)]
fn readyz() {}

#[utoipa::path(get, path = "/admin/v1/nodes", tag = "admin",
    responses((status = 200, description = "Every node in the registry, and this node's own view", body = serde_json::Value)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn nodes() {}

#[utoipa::path(get, path = "/admin/v1/clients/{client_id}", tag = "admin",
    params(("client_id" = String, Path)),
    responses(
        (status = 200, description = "Route and queue of the client", body = serde_json::Value),
        (status = 400, description = "bad_client_id", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn client() {}

#[utoipa::path(delete, path = "/admin/v1/clients/{client_id}", tag = "admin",
    params(("client_id" = String, Path)),
    responses(
        (status = 200, description = "Kicked (reason `admin`)", body = serde_json::Value),
        (status = 404, description = "not_connected", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn kick() {}

#[utoipa::path(get, path = "/admin/v1/queues", tag = "admin",
    params(("limit" = Option<u32>, Query, description = "Clients listed, default 20")),
    responses((status = 200, description = "Fullest client queues, totals, spool depths", body = serde_json::Value)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn queues() {}

#[utoipa::path(get, path = "/admin/v1/pools", tag = "admin",
    responses((status = 200, description = "Every service's endpoints and their state", body = serde_json::Value)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn pools() {}

#[utoipa::path(post, path = "/admin/v1/pools/{service}/endpoints/{endpoint}/isolate", tag = "admin",
    params(("service" = String, Path), ("endpoint" = String, Path, description = "Index in the service's list, or its URL percent-encoded")),
    responses(
        (status = 200, description = "Isolated on every node", body = serde_json::Value),
        (status = 404, description = "Unknown service or endpoint", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn isolate() {}

#[utoipa::path(post, path = "/admin/v1/pools/{service}/endpoints/{endpoint}/recover", tag = "admin",
    params(("service" = String, Path), ("endpoint" = String, Path)),
    responses(
        (status = 200, description = "Back in traffic", body = serde_json::Value),
        (status = 404, description = "Unknown service or endpoint", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn recover() {}

#[utoipa::path(get, path = "/admin/v1/routing", tag = "admin",
    responses((status = 200, description = "`{\"services\": {name: service}}`", body = serde_json::Value)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn routing() {}

#[utoipa::path(put, path = "/admin/v1/routing/services/{name}", tag = "admin",
    params(("name" = String, Path, description = "1..=64 of [A-Za-z0-9_.-]")),
    request_body = ServiceConfig,
    responses(
        (status = 200, description = "In force on this node now, on every node within a second", body = serde_json::Value),
        (status = 400, description = "invalid_config, with the reason; nothing changed", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn put_service() {}

#[utoipa::path(delete, path = "/admin/v1/routing/services/{name}", tag = "admin",
    params(("name" = String, Path)),
    responses(
        (status = 200, description = "Removed", body = serde_json::Value),
        (status = 404, description = "Unknown service", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn delete_service() {}

#[utoipa::path(get, path = "/admin/v1/whoami", tag = "admin",
    responses(
        (status = 200, description = "`{\"role\": \"admin\" | \"read\", \"node_id\"}`: what the caller's token may do", body = serde_json::Value),
        (status = 401, description = "No or a wrong token", body = ErrorAnswer),
    ),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn whoami() {}

#[utoipa::path(get, path = "/admin/v1/totals", tag = "admin",
    params(("scope" = Option<String>, Query, description = "`node`: this node only; default: every live node summed")),
    responses((status = 200, description = "`{totals: {connections, pushes_delivered, frames_in, backend_calls}, nodes, answered}`", body = serde_json::Value)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn totals() {}

#[utoipa::path(get, path = "/admin/v1/users/{user_id}/clients", tag = "admin",
    params(("user_id" = String, Path)),
    responses((status = 200, description = "`{user_id, clients: [{client_id, online, node_id}], truncated}`", body = serde_json::Value)),
    security(("admin_token" = [])))]
#[allow(dead_code)]
fn user_clients() {}

/// `admin.token` (or, for reads, `admin.read_token`) as a bearer token.
struct AdminToken;

impl Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Duplex admin API", description = "For operators: nodes, clients, queues, pools and the routing table (docs/OPERATIONS.md)."),
    paths(metrics, healthz, readyz, whoami, nodes, totals, client, user_clients, kick, queues, pools, isolate, recover, routing, put_service, delete_service),
    components(schemas(ServiceConfig, EndpointConfig, ErrorAnswer)),
    modifiers(&AdminToken)
)]
struct AdminApi;

/// The document as served, rendered once.
pub(crate) static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    let mut doc = AdminApi::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_json().unwrap_or_default()
});
