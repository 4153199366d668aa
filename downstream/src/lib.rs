//! Downstream tier: the push API for backends and delivery to access nodes.
//!
//! # Layout
//! - [`run`]: the tier's entry point (HTTP listener, retries, shutdown);
//!   [`Downstream`] when the node also needs the tier's [`ReplyLink`].
//! - `api`: routes, API-key check, handlers.
//! - `request`: push request types and validation (nothing is stored before it passes).
//! - `push`: storing and delivering a push; waiting for acks.
//! - `retry`: per-client redelivery with backoff and full jitter.
//! - `reply`: replies to client requests, stored and delivered like pushes.
//! - `sent`: batched, best-effort `sent` status marks.
//! - `sources`: push commands consumed from message queues (`downstream.sources`).
//! - `expiry`: `expired` events for messages that expired unacked.
//! - `push_tokens`: clients' OS push tokens, registered by backends (for the push fallback).
//! - `error`: failures as `{code, message}` JSON responses.
//! - `openapi`: the OpenAPI 3.1 document served at `/openapi.json`.

use std::sync::Arc;

use crate::config::DownstreamConfig;
use duplex_shared::config::HttpConfig;
use duplex_shared::events::{EventKind, EventSink};
use duplex_shared::links::{NodeLink, ReplyLink};
use duplex_shared::metrics::{Counter, Histogram, Metrics};
use duplex_store::Store;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod api;
pub mod config;
mod error;
mod expiry;
pub mod fallback;
mod openapi;
mod push;
mod push_tokens;
mod reply;
mod request;
mod retry;
mod sent;
mod sources;

pub use error::ApiError;

/// What the downstream tier needs from the rest of the node.
#[derive(Clone)]
pub struct DownstreamContext {
    pub config: DownstreamConfig,
    /// This node's id: its consumer name where a broker needs one per process.
    pub node_id: String,
    pub store: Arc<dyn Store>,
    /// Reaches access nodes to deliver, kick and broadcast.
    pub nodes: Arc<dyn NodeLink>,
    pub metrics: Arc<Metrics>,
    /// Bounds of the push API listener (its body limit is `config.max_body_bytes`).
    pub http: HttpConfig,
    /// The node's lifecycle events; this tier reports `expired` ones.
    pub events: Option<Arc<dyn EventSink>>,
}

/// The tier's listener, bound by the caller.
#[derive(Debug)]
pub struct DownstreamListeners {
    pub http: TcpListener,
}

pub(crate) struct Shared {
    config: DownstreamConfig,
    node_id: String,
    store: Arc<dyn Store>,
    nodes: Arc<dyn NodeLink>,
    retrier: retry::Retrier,
    sent_marks: sent::SentMarks,
    metrics: Arc<Metrics>,
    /// Per-message counters, resolved once (they are counted on the push hot path).
    counts: Counts,
    /// Where `expired` events go, if they are wanted: then every stored
    /// message asks the store to report its expiry.
    expiry_events: Option<Arc<dyn EventSink>>,
    /// Waiting OS push fallbacks, when a provider is configured.
    fallbacks: Option<fallback::Fallbacks>,
}

pub(crate) struct Counts {
    accepted_qos0: Counter,
    accepted_qos1: Counter,
    delivered: Counter,
    delivery_seconds: Histogram,
}

pub(crate) use duplex_store::now_ms;

/// Serves the push API until `shutdown` is cancelled, then finishes the
/// requests in flight. Stored messages need no draining: they are in the store.
pub async fn run(ctx: DownstreamContext, listeners: DownstreamListeners, shutdown: CancellationToken) {
    match Downstream::start(ctx) {
        Ok(tier) => tier.serve(listeners, shutdown).await,
        Err(e) => tracing::error!(error = %e, "the downstream tier cannot start"),
    }
}

/// Messages listed as waiting in an admin client lookup.
pub const WAITING_SHOWN: usize = 10;

/// Client lookup and kick, for the admin API (the push API has its own routes).
#[derive(Clone)]
pub struct Clients(Arc<Shared>);

impl Clients {
    /// Route, connection time, pending count and bytes, ack watermark,
    /// expiries, and the oldest messages waiting for the client's ack
    /// (`waiting`, at most [`WAITING_SHOWN`], each queued or sent).
    pub async fn info(&self, client_id: String) -> Result<serde_json::Value, ApiError> {
        let info = self.0.client_info(client_id.clone()).await?;
        let now = now_ms();
        let store = &self.0.store;
        let pending = store.pending(&client_id, 0, WAITING_SHOWN, now).await?;
        let mut waiting = Vec::with_capacity(pending.messages.len());
        for m in &pending.messages {
            let status = store.message_status(&client_id, m.seq, m.record.nonce, now).await?;
            waiting.push(serde_json::json!({
                "seq": m.seq,
                "message_id": m.msg_id,
                "state": status.as_ref().map_or("queued", |s| s.state.as_str()),
                "created_at": m.record.created_ms,
                "expires_at": m.record.expires_ms,
                "sent_at": status.and_then(|s| s.sent_at),
                "reply": m.record.reply_to.is_some(),
            }));
        }
        let mut value = serde_json::to_value(info)
            .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        value["waiting"] = waiting.into();
        Ok(value)
    }

    pub async fn kick(&self, client_id: String) -> Result<serde_json::Value, ApiError> {
        self.0.kick(client_id).await
    }
}

/// How long shutdown waits for the queued sent marks to be written.
const MARKS_FLUSH_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The tier, started (retries, sent marks) but not yet serving HTTP, so the
/// node can hand its [`ReplyLink`] to the upstream tier first.
pub struct Downstream {
    shared: Arc<Shared>,
    http: HttpConfig,
    marks_stop: CancellationToken,
    marks_writer: tokio::task::JoinHandle<()>,
}

impl Downstream {
    /// Fails only for a fallback provider that cannot be set up (its key file).
    pub fn start(ctx: DownstreamContext) -> Result<Self, String> {
        let retrier = retry::Retrier::new(
            ctx.store.clone(),
            ctx.nodes.clone(),
            ctx.config.retry_min_ms,
            ctx.config.retry_max_ms,
            ctx.metrics.clone(),
        );
        let http = ctx.http;
        let marks_stop = CancellationToken::new();
        let (sent_marks, marks_writer) = sent::SentMarks::start(ctx.store.clone(), marks_stop.clone());
        let fallbacks = fallback::Fallbacks::start(
            &ctx.config.fallback,
            ctx.store.clone(),
            ctx.metrics.clone(),
            marks_stop.clone(),
        )
        .map_err(|e| format!("downstream.fallback: {e}"))?;
        let shared = Arc::new(Shared {
            config: ctx.config,
            node_id: ctx.node_id,
            store: ctx.store,
            nodes: ctx.nodes,
            retrier,
            sent_marks,
            counts: Counts {
                accepted_qos0: ctx.metrics.counter("duplex_pushes_accepted_total", &[("qos", "0")]),
                accepted_qos1: ctx.metrics.counter("duplex_pushes_accepted_total", &[("qos", "1")]),
                delivered: ctx.metrics.counter("duplex_pushes_delivered_total", &[]),
                delivery_seconds: ctx.metrics.histogram("duplex_push_delivery_seconds", &[]),
            },
            metrics: ctx.metrics,
            expiry_events: ctx.events.filter(|e| e.wants(EventKind::Expired)),
            fallbacks,
        });
        Ok(Downstream {
            shared,
            http,
            marks_stop,
            marks_writer,
        })
    }

    /// Client lookup and kick for the node's admin API.
    pub fn clients(&self) -> Clients {
        Clients(self.shared.clone())
    }

    /// Where the upstream tier hands replies to client requests.
    pub fn replies(&self) -> Arc<dyn ReplyLink> {
        self.shared.clone()
    }

    /// The push API's routes (docs/API.md), for a caller that serves them
    /// itself; [`Downstream::serve`] serves them with the listener's bounds.
    pub fn router(&self) -> axum::Router {
        api::router(self.shared.clone())
    }

    /// Serves the push API until `shutdown`, then stops retries and flushes sent marks.
    pub async fn serve(self, listeners: DownstreamListeners, shutdown: CancellationToken) {
        let app = self.router();
        let limits = duplex_http::HttpLimits {
            max_connections: self.http.max_connections as usize,
            header_timeout: self.http.header_timeout(),
            request_timeout: self.http.request_timeout(),
            max_body_bytes: self.shared.config.max_body_bytes as usize,
        };
        let mut consumers = tokio::task::JoinSet::new();
        sources::spawn_all(
            self.shared.clone(),
            &self.shared.node_id,
            shutdown.clone(),
            &mut consumers,
        );
        if let Some(events) = &self.shared.expiry_events {
            consumers.spawn(expiry::scan(
                self.shared.store.clone(),
                events.clone(),
                self.shared.metrics.clone(),
                self.shared.node_id.clone(),
                shutdown.clone(),
            ));
        }
        duplex_http::serve(listeners.http, app, limits, shutdown.clone()).await;
        // Each consumer bounds its own drain (sources::DRAIN_LIMIT).
        while consumers.join_next().await.is_some() {}
        self.shared.retrier.shutdown();
        self.marks_stop.cancel();
        // Bounded: a store that stopped answering must not hold the exit.
        if tokio::time::timeout(MARKS_FLUSH_LIMIT, self.marks_writer)
            .await
            .is_err()
        {
            tracing::warn!("sent marks still being written at exit; those messages show queued until acked");
        }
    }
}
