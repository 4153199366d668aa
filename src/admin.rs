//! The node's admin listener: Prometheus `/metrics`, liveness `/healthz` and
//! readiness `/readyz`. It binds only the admin address, never a client or
//! backend port.
//!
//! Ready means: the store answers (within a second) and the node is not
//! draining. A load balancer or Kubernetes stops sending new clients to a node
//! that is not ready.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use duplex_shared::metrics::Metrics;
use duplex_shared::store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Admin {
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    draining: CancellationToken,
}

/// Serves until `stop` is cancelled. `draining` turns readiness false at once.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    store: Arc<dyn Store>,
    draining: CancellationToken,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Admin {
            metrics,
            store,
            draining,
        }));
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn metrics_text(State(admin): State<Arc<Admin>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
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
    let ready = store.is_ok() && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "ready": ready,
        "store": store.err().unwrap_or_else(|| "ok".to_owned()),
        "draining": draining,
    });
    (status, Json(body))
}
