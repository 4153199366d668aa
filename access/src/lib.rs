//! Access tier: holds client connections over the private TCP protocol and
//! WebSocket, authenticates them, keeps heartbeats, and owns their routes.
//!
//! # Layout
//! - [`run`]: the tier's entry point, given its context, bound listeners and a shutdown token.
//! - `listen`: accept loops, the connection limit and refusals.
//! - `preauth`: caps on unauthenticated sockets, node-wide and per source address.
//! - `conn`: the task that owns one connection: authentication and route claim.
//! - `session`: the authenticated connection: start, goodbye, cleanup; `serve`: its serving loop.
//! - `sweeper`: one timer for all connections: raises a connection's alarm when its deadline comes.
//! - `sequencer`: stored messages in seq order: replay, hole filling, gap frames.
//! - `transport`: TCP and WebSocket, plain or over TLS, behind one read/write interface.
//! - [`tls`]: the TLS listeners' certificate: loading, resumption, reload on SIGHUP or file change.
//! - [`hub`]: the session table, local delivery and kicks, `LocalNodes`.
//! - `outbox`: a connection's bounded outbound queue and close signal (overflow policy).
//! - `leases`: batched renewal of this node's route leases.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::TokenVerifier;
use crate::config::AccessConfig;
use duplex_shared::events::{ClientEvent, EventDetail, EventKind, EventSink};
use duplex_shared::links::{NodeLink, UpstreamLink};
use duplex_shared::metrics::{FrameCounts, Metrics};
use duplex_shared::net::bind_listener;
use duplex_shared::protocol::Limits;
use duplex_store::Store;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

pub mod auth;
pub mod config;
mod conn;
mod drain;
pub mod hub;
mod inbound;
mod leases;
mod listen;
mod outbox;
mod preauth;
mod send;
mod sequencer;
mod serve;
mod session;
mod sweeper;
pub mod tls;
mod token_life;
mod transport;

pub use hub::{Hub, LocalNodes};
pub use transport::TransportKind;

/// What the access tier needs from the rest of the node.
#[derive(Clone)]
pub struct AccessContext {
    pub config: AccessConfig,
    pub node_id: String,
    pub verifier: Arc<TokenVerifier>,
    pub store: Arc<dyn Store>,
    /// Reaches access nodes (this one included) to deliver and kick.
    pub nodes: Arc<dyn NodeLink>,
    pub upstream: Arc<dyn UpstreamLink>,
    pub hub: Arc<Hub>,
    /// Where the tier counts what it does (rendered by the node's admin endpoint).
    pub metrics: Arc<Metrics>,
    /// The TLS listeners' certificate (loaded by the caller, so a bad one stops the start).
    pub tls: Option<Arc<tls::Certificates>>,
    /// Where lifecycle events go (docs/EVENTS.md); `None`: none are built.
    pub events: Option<Arc<dyn EventSink>>,
}

/// The tier's listeners, bound by the caller (so tests can use port 0).
#[derive(Debug)]
pub struct AccessListeners {
    pub tcp: TcpListener,
    pub ws: TcpListener,
    /// The private protocol over TLS, if configured.
    pub tls: Option<TcpListener>,
    /// WebSocket over TLS, if configured.
    pub wss: Option<TcpListener>,
}

impl AccessListeners {
    /// Binds the configured listeners (backlog, `SO_REUSEPORT`).
    pub fn bind(config: &AccessConfig) -> io::Result<Self> {
        let bind = |addr| bind_listener(addr, config.listen_backlog, config.reuse_port);
        Ok(AccessListeners {
            tcp: bind(config.tcp_listen)?,
            ws: bind(config.ws_listen)?,
            tls: config.tls_listen.map(bind).transpose()?,
            wss: config.wss_listen.map(bind).transpose()?,
        })
    }
}

pub(crate) struct Shared {
    config: AccessConfig,
    limits: Limits,
    node_id: String,
    verifier: Arc<TokenVerifier>,
    store: Arc<dyn Store>,
    nodes: Arc<dyn NodeLink>,
    upstream: Arc<dyn UpstreamLink>,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
    permits: Arc<Semaphore>,
    refusing: Arc<Semaphore>,
    preauth: Arc<preauth::PreAuth>,
    next_conn_id: AtomicU64,
    tracker: TaskTracker,
    metrics: Arc<Metrics>,
    /// `duplex_frames_in_total` / `_out_total` per frame type, resolved once.
    frames_in: FrameCounts,
    pub(crate) frames_out: FrameCounts,
    /// The other access nodes that `go_away` names, read from the
    /// registry once per shutdown.
    drain_targets: tokio::sync::OnceCell<Vec<duplex_store::NodeInfo>>,
    tls: Option<Arc<tls::Certificates>>,
    events: Option<Arc<dyn EventSink>>,
    /// `duplex_push_ack_seconds`, resolved once (observed on acks).
    push_ack_seconds: duplex_shared::metrics::Histogram,
    /// What connections state their deadlines on (see `sweeper`).
    clock: sweeper::Clock,
    sequencer_counts: Arc<sequencer::Counts>,
}

impl Shared {
    /// Emits a lifecycle event about `client` when that kind is configured.
    pub(crate) fn event(&self, kind: EventKind, client: &session::Client, detail: impl FnOnce() -> EventDetail) {
        if let Some(events) = self.events.as_ref().filter(|e| e.wants(kind)) {
            events.emit(ClientEvent {
                kind,
                time_ms: duplex_store::now_ms(),
                node_id: self.node_id.clone(),
                client_id: client.client_id.to_string(),
                user_id: client.user_id.to_string(),
                detail: detail(),
            });
        }
    }

    pub(crate) fn count_frame_in(&self, type_name: &str) {
        self.frames_in.count(type_name);
    }
}

/// Serves clients until `shutdown` is cancelled; then tells every client to
/// go away (with a jittered reconnect delay), releases routes, and returns
/// once connections are closed or the shutdown grace period ends.
pub async fn run(ctx: AccessContext, listeners: AccessListeners, shutdown: CancellationToken) {
    let frames_out = FrameCounts::new(&ctx.metrics, "duplex_frames_out_total");
    let sequencer_counts = Arc::new(sequencer::Counts {
        metrics: ctx.metrics.clone(),
        frames_out: frames_out.clone(),
    });
    let shared = Arc::new(Shared {
        limits: ctx.config.limits(),
        permits: Arc::new(Semaphore::new(ctx.config.max_connections)),
        refusing: Arc::new(Semaphore::new(listen::MAX_REFUSING)),
        preauth: preauth::PreAuth::new(&ctx.config),
        config: ctx.config,
        node_id: ctx.node_id,
        verifier: ctx.verifier,
        store: ctx.store,
        nodes: ctx.nodes,
        upstream: ctx.upstream,
        hub: ctx.hub,
        shutdown: shutdown.clone(),
        next_conn_id: AtomicU64::new(1),
        tracker: TaskTracker::new(),
        frames_in: FrameCounts::new(&ctx.metrics, "duplex_frames_in_total"),
        frames_out,
        push_ack_seconds: ctx.metrics.histogram("duplex_push_ack_seconds", &[]),
        drain_targets: tokio::sync::OnceCell::new(),
        metrics: ctx.metrics,
        tls: ctx.tls,
        events: ctx.events,
        clock: sweeper::Clock::new(),
        sequencer_counts,
    });
    shared.hub.count_into(
        shared.frames_out.clone(),
        shared.metrics.counter("duplex_outbound_deferred_total", &[]),
    );
    let tcp = tokio::spawn(listen::accept_loop(shared.clone(), listeners.tcp, TransportKind::Tcp));
    let ws = tokio::spawn(listen::accept_loop(
        shared.clone(),
        listeners.ws,
        TransportKind::WebSocket,
    ));
    let mut tls_loops = Vec::new();
    for (listener, kind) in [(listeners.tls, TransportKind::Tls), (listeners.wss, TransportKind::Wss)] {
        if let Some(listener) = listener {
            tls_loops.push(tokio::spawn(listen::accept_loop(shared.clone(), listener, kind)));
        }
    }
    if let Some(certs) = &shared.tls {
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| warn!(error = %e, "no SIGHUP handler: the certificate reloads only when its files change"))
            .ok();
        tls_loops.push(tokio::spawn(tls::watch(certs.clone(), hangup, shutdown.clone())));
    }
    let renew = tokio::spawn(leases::renew_forever(shared.clone()));
    let sweeper = tokio::spawn(sweeper::sweep_forever(shared.clone()));
    shutdown.cancelled().await;
    let _ = tokio::join!(tcp, ws, renew);
    for task in tls_loops {
        let _ = task.await;
    }
    shared.tracker.close();
    let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
    info!(connections = shared.hub.len(), "access draining");
    if tokio::time::timeout(grace, shared.tracker.wait()).await.is_err() {
        warn!(
            left = shared.hub.len(),
            "shutdown grace period ended with connections open"
        );
    }
    sweeper.abort();
}
