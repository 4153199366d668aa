//! `GET /admin/v1/totals`: the counters behind the dashboard's rates,
//! summed over every live node of the deployment (each peer asked over its
//! internal listener, at most `PEER_TIMEOUT` each, all at once), so any
//! node's dashboard shows the whole deployment's traffic. `?scope=node`
//! answers for this node alone (what peers are asked).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{error, forward, refused, Admin, Role};

/// How long a peer may take to answer before it is left out of the sum.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// The series summed, by name (every label set of each).
const SERIES: [(&str, &str); 4] = [
    ("connections", "duplex_connections"),
    ("pushes_delivered", "duplex_pushes_delivered_total"),
    ("frames_in", "duplex_frames_in_total"),
    ("backend_calls", "duplex_backend_calls_total"),
];

#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize)]
pub struct Totals {
    pub connections: f64,
    pub pushes_delivered: f64,
    pub frames_in: f64,
    pub backend_calls: f64,
}

impl Totals {
    fn add(&mut self, other: &Totals) {
        self.connections += other.connections;
        self.pushes_delivered += other.pushes_delivered;
        self.frames_in += other.frames_in;
        self.backend_calls += other.backend_calls;
    }
}

/// This node's counters, read off its Prometheus text (every label set).
fn local(admin: &Admin) -> Totals {
    let text = admin.metrics.render();
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let [c, p, f, b] = SERIES.map(|(_, name)| sum(name));
    Totals {
        connections: c,
        pushes_delivered: p,
        frames_in: f,
        backend_calls: b,
    }
}

#[derive(Deserialize)]
pub struct Scope {
    scope: Option<String>,
}

pub async fn totals(State(admin): State<Arc<Admin>>, headers: HeaderMap, Query(q): Query<Scope>) -> Response {
    if let Some(r) = refused(&admin, &headers, Role::Read) {
        return r;
    }
    let mut sum = local(&admin);
    if q.scope.as_deref() == Some("node") {
        return Json(serde_json::json!({ "totals": sum })).into_response();
    }
    let nodes = match admin.store.nodes(duplex_store::now_ms()).await {
        Ok(n) => n,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", e.to_string()),
    };
    let peers: Vec<_> = nodes
        .iter()
        .filter(|n| n.node_id != admin.node_id && !n.internal.is_empty())
        .collect();
    let mut answered = 1;
    if let Some(forwarder) = &admin.forwarder {
        let asks = peers.iter().map(|n| {
            forward::get_json(
                forwarder,
                &n.internal,
                "/admin/v1/totals?scope=node",
                Role::Read,
                PEER_TIMEOUT,
            )
        });
        for answer in futures_util::future::join_all(asks).await.into_iter().flatten() {
            if let Ok(t) = serde_json::from_value::<Totals>(answer["totals"].clone()) {
                sum.add(&t);
                answered += 1;
            }
        }
    }
    Json(serde_json::json!({
        "totals": sum,
        "nodes": peers.len() + 1,
        "answered": answered,
    }))
    .into_response()
}
