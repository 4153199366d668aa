//! A connection after authentication: registered in the hub, serving frames
//! in both directions until it ends, then saying why and cleaning up.
//!
//! The task owns the socket; `serve.rs` is its serving loop. Every write is
//! bounded by the write timeout. Stored messages go through the
//! `Sequencer`, which keeps them in seq order and replays what the client
//! missed.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use duplex_shared::events::{EventDetail, EventKind};
use duplex_shared::links::ClientContext;
use duplex_shared::protocol::{Connected, Frame, Kicked};
use duplex_store::Route;
use futures_util::FutureExt;
use tokio::time::{timeout, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::hub::SessionHandle;
use crate::outbox::{CloseReason, Outbox, Outgoing};
use crate::send::send_now;
use crate::sequencer::{now_ms, Sequencer};
use crate::token_life::TokenLife;
use crate::transport::{ReadEvent, Transport};
use crate::Shared;

/// Frames already received that one pass of the session loop handles before
/// it looks at its outbox again (keeps a flood of small frames from starving
/// deliveries).
pub(crate) const FRAMES_PER_PASS: usize = 256;
/// Backend calls (uploads, requests) one connection may have in flight.
pub(crate) const MAX_IN_FLIGHT: usize = 32;

pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) io: Transport,
    pub(crate) client: Client,
    pub(crate) sequencer: Sequencer,
    /// Where this connection's replay started, and the highest ack it
    /// stored: what was written beyond both is recorded when it ends.
    pub(crate) resumed_from: u64,
    pub(crate) acked: u64,
    /// The first stored push written since the last sample of write-to-ack
    /// latency, and when: one push per ack round trip is timed, so the
    /// histogram costs a few bytes per connection, not one entry per push.
    pub(crate) ack_probe: Option<Box<AckProbe>>,
    /// Frames on their way to this connection (registered in the hub by `run`).
    pub(crate) outbox: Arc<Outbox>,
    /// The connection's token: when it expires, and the grace after that.
    pub(crate) token: TokenLife,
    /// The serving loop's state (frame rate, silence, drain).
    pub(crate) serving: crate::serve::Serving,
    /// The `session` span (conn id, epoch). Kept here, not around the task's
    /// future: each step the session takes runs in it (see `serve.rs`), and
    /// the task stays in a smaller size class.
    pub(crate) span: tracing::Span,
    /// When `connected` went out, ms since the Unix epoch (0 until then).
    pub(crate) connected_at_ms: u64,
}

/// What only the start of a session needs (`connected`, the kick of the
/// connection it replaces): boxed and freed once the session opened, not kept
/// for the session's life.
pub(crate) struct Opening {
    /// The `connect` frame's id, echoed by `connected`.
    pub connect_id: u64,
    /// The connection this one replaces.
    pub previous: Option<Route>,
    /// The token's expiry (Unix seconds), reported by `connected`.
    pub token_expires_at: u64,
}

/// How the start went: `None` when a newer connection of the client already
/// won (the session never registered), else whether it may serve.
type Opened = Option<Result<(), End>>;

/// The session holds a slot of the node's connection limit (`Shared::permits`)
/// without keeping the permit (16 bytes per connection): `conn::start` forgets
/// the permit, and the slot comes back here.
impl Drop for Session {
    fn drop(&mut self) {
        self.shared.permits.add_permits(1);
    }
}

/// Who the connection is. Leaner than the links' `ClientContext`, which is
/// built when a call needs one: the route's node is this node, so it is not
/// kept per connection.
pub(crate) struct Client {
    pub client_id: Box<str>,
    pub user_id: Box<str>,
    pub conn_epoch: u64,
}

impl Session {
    /// This connection's route.
    pub(crate) fn route(&self) -> Route {
        Route {
            node_id: self.shared.node_id.clone(),
            conn_epoch: self.client.conn_epoch,
        }
    }

    /// Who the connection is, as the links take it.
    pub(crate) fn context(&self) -> ClientContext {
        ClientContext {
            client_id: self.client.client_id.to_string(),
            user_id: self.client.user_id.to_string(),
            route: self.route(),
        }
    }
}

/// A push whose ack is being waited for: its seq, when it was written, and
/// (with trace export on) the `ack` span that ends when the ack comes.
pub(crate) struct AckProbe {
    pub seq: u64,
    pub written: Instant,
    /// Held, never read: dropping it ends the span.
    pub _span: Option<Box<tracing::Span>>,
}

/// The `ack` span of an encoded push frame, continuing the push's trace
/// (its `traceparent` header); `None` unless spans are exported.
fn ack_span(body: &Bytes, shared: &Shared) -> Option<Box<tracing::Span>> {
    let span = tracing::debug_span!("ack", seq = tracing::field::Empty);
    if span.is_disabled() {
        return None;
    }
    let Ok(Frame::Push(push)) = duplex_shared::protocol::decode_body(body, &shared.limits) else {
        return None;
    };
    duplex_shared::trace::continue_from(&span, push.headers.get("traceparent").map(String::as_str));
    span.record("seq", push.seq);
    Some(Box::new(span))
}

/// Why the serving loop ended.
pub(crate) enum End {
    ClientLeft,
    Failed,
    Silent,
    Closed(CloseReason),
    Shutdown,
    Protocol,
    TokenExpired,
    /// The store failed while the connection was delivering: the client
    /// reconnects and resumes (not the client's fault, so not a protocol error).
    StoreUnavailable,
    /// A write stalled past the write timeout: a slow consumer whose stream
    /// may end mid-frame, so no goodbye frame can follow.
    Stalled,
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ClientLeft => "client_left",
            End::Failed => "network",
            End::Silent => "heartbeat_timeout",
            End::Closed(CloseReason::Kicked(_)) => "kicked",
            End::Stalled => "slow_consumer",
            End::Shutdown => "shutdown",
            End::Protocol => "protocol_error",
            End::StoreUnavailable => "store_unavailable",
            End::TokenExpired => "token_expired",
        }
    }
}

impl Session {
    /// Registers the session, says `connected` and replays what the client
    /// missed (see `open_inner`); true when it is to be served ([`Self::run`]),
    /// false when it ended already (closed here if it had registered).
    /// Boxed, and called by the connection's task itself: `opening` then
    /// lives only in this box, not in the task for the connection's life.
    pub(crate) fn open(&mut self, opening: Box<Opening>) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        let span = self.span.clone();
        Box::pin(
            async move {
                let outbox = self.outbox.clone();
                match self.open_inner(&outbox, opening).await {
                    None => false,
                    Some(Err(end)) => {
                        self.close(end).await;
                        false
                    }
                    Some(Ok(())) => true,
                }
            }
            .instrument(span),
        )
    }

    /// Serves the opened session to its end, then closes it. Only the
    /// serving loop is awaited in place: the start and the end are boxed, so
    /// the connection's task carries no more than the loop's state while the
    /// connection lives.
    pub(crate) async fn run(mut self: Box<Self>) {
        let outbox = self.outbox.clone();
        let end = self.serve(&outbox).await;
        drop(outbox);
        let span = self.span.clone();
        Box::pin(self.close(end).instrument(span)).await;
    }

    /// `None` when a newer connection of the client already won.
    async fn open_inner(&mut self, outbox: &Arc<Outbox>, opening: Box<Opening>) -> Opened {
        let Opening {
            connect_id,
            previous,
            token_expires_at,
        } = *opening;
        let shared = self.shared.clone();
        let handle = SessionHandle {
            conn_epoch: self.client.conn_epoch,
            outbox: outbox.clone(),
            connected_at_ms: crate::auth::unix_now() * 1000,
        };
        if shared.hub.register(&self.client.client_id, handle).is_err() {
            debug!("a newer connection of this client already won");
            let _ = self.send_kicked("replaced").await;
            self.finish().await;
            return None;
        }
        self.kick_previous(previous);
        let transport = self.io.kind().label();
        self.connected_at_ms = crate::sequencer::now_ms();
        shared
            .metrics
            .counter("duplex_connections", &[("transport", transport)])
            .inc();
        shared.metrics.inc("duplex_connects_total", &[("transport", transport)]);
        let connected = &Frame::Connected(Connected {
            id: connect_id,
            session_id: self.route().encode(),
            node_id: shared.node_id.clone(),
            heartbeat_ms: shared.config.heartbeat_ms,
            reconnect_min_ms: shared.config.reconnect_min_ms,
            reconnect_max_ms: shared.config.reconnect_max_ms,
            max_frame_bytes: shared.limits.max_frame_bytes,
            token_expires_at,
            pong_deadline_ms: shared.config.pong_deadline_ms,
        });
        if send_now(&shared, &mut self.io, connected).await.is_err() {
            return Some(Err(End::Failed));
        }
        info!(
            client_id = %self.client.client_id,
            user_id = %self.client.user_id,
            transport,
            "client connected"
        );
        shared.event(EventKind::Connected, &self.client, || EventDetail::Connected {
            transport,
        });
        let started = Box::pin(self.resume()).await;
        if started.is_ok() {
            outbox.note_sent(self.sequencer.cursor);
        }
        Some(started)
    }

    /// Counts and reports the end, says goodbye, cleans up.
    async fn close(&mut self, end: End) {
        let shared = self.shared.clone();
        let transport = self.io.kind().label();
        shared
            .metrics
            .inc("duplex_disconnects_total", &[("reason", end.label())]);
        let duration_ms = crate::sequencer::now_ms().saturating_sub(self.connected_at_ms);
        info!(
            client_id = %self.client.client_id,
            user_id = %self.client.user_id,
            transport,
            reason = end.label(),
            duration_ms,
            "client disconnected"
        );
        shared.event(EventKind::Disconnected, &self.client, || EventDetail::Disconnected {
            transport,
            reason: end.label(),
            duration_ms,
        });
        Box::pin(self.say_goodbye(end)).await;
        Box::pin(self.finish()).await;
        shared
            .metrics
            .counter("duplex_connections", &[("transport", transport)])
            .dec();
    }

    /// Closes the connection this one replaced, wherever it is.
    fn kick_previous(&mut self, previous: Option<Route>) {
        let Some(prev) = previous else {
            return;
        };
        if prev.node_id == self.shared.node_id {
            self.shared
                .hub
                .kick_local(&self.client.client_id, prev.conn_epoch, "replaced");
            return;
        }
        let nodes = self.shared.nodes.clone();
        let client_id = self.client.client_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = nodes.kick(&client_id, &prev, "replaced").await {
                // The old node is gone or unreachable; its connection (if any)
                // lost its route and cannot receive deliveries any more.
                warn!(node = %prev.node_id, error = %e, "could not kick the replaced connection");
            }
        });
    }

    /// Treats everything up to `last_seq` as acked, then replays what is
    /// stored after it, in order, before any new delivery is written.
    async fn resume(&mut self) -> Result<(), End> {
        let (store, counts) = (self.shared.store.clone(), self.shared.sequencer_counts.clone());
        let client_id = self.client.client_id.to_string();
        let last_seq = self.sequencer.cursor;
        if last_seq > 0 {
            match store.resume(&client_id, last_seq, now_ms()).await {
                // Replay from where the store says earlier connections got to.
                Ok(after) => self.sequencer.cursor = after,
                Err(e) => return Err(self.store_failed(None, &e).await),
            }
        }
        self.resumed_from = self.sequencer.cursor;
        // Bounded by the queue cap; a full batch means more may follow.
        for _ in 0..10_000 {
            let mut bodies = Vec::new();
            let more = match self
                .sequencer
                .catch_up((&*store, &counts), &client_id, None, "replay", &mut bodies)
                .await
            {
                Ok(more) => more,
                Err(e) => return Err(self.store_failed(None, &e).await),
            };
            self.report_gaps();
            self.write(bodies).await?;
            if !more {
                break;
            }
        }
        Ok(())
    }

    /// Writes a batch from the outbox, stored messages in seq order.
    pub(crate) async fn deliver(&mut self, items: Vec<Outgoing>) -> Result<(), End> {
        let (store, counts) = (self.shared.store.clone(), self.shared.sequencer_counts.clone());
        let mut bodies = Vec::with_capacity(items.len());
        if let Err(e) = self
            .sequencer
            .prepare((&*store, &counts), &self.client.client_id, items, &mut bodies)
            .await
        {
            return Err(self.store_failed(None, &e).await);
        }
        self.report_gaps();
        self.write(bodies).await
    }

    /// A `gap` event per gap frame just prepared.
    fn report_gaps(&mut self) {
        for (from_seq, to_seq) in self.sequencer.take_gaps() {
            self.shared.event(EventKind::Gap, &self.client, || EventDetail::Gap {
                from_seq,
                to_seq,
                reason: "expired",
            });
        }
    }

    async fn write(&mut self, bodies: Vec<Bytes>) -> Result<(), End> {
        if bodies.is_empty() {
            return Ok(());
        }
        // The last frame is the probe's push if one starts here (kept for its span).
        let last = self.ack_probe.is_none().then(|| bodies.last().cloned()).flatten();
        match timeout(self.shared.write_timeout(), self.io.write_owned(bodies)).await {
            Ok(Ok(())) => {
                if self.ack_probe.is_none() && self.sequencer.cursor > self.acked {
                    self.ack_probe = Some(Box::new(AckProbe {
                        seq: self.sequencer.cursor,
                        written: Instant::now(),
                        _span: last.and_then(|body| ack_span(&body, &self.shared)),
                    }));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(End::Failed),
            Err(_) => Err(End::Stalled),
        }
    }

    /// The next frame if it has already arrived (no waiting; the read is
    /// cancel-safe), unless this pass already handled its share of frames.
    pub(crate) fn read_buffered(&mut self, handled: usize) -> Option<ReadEvent> {
        if handled >= FRAMES_PER_PASS {
            return None;
        }
        self.io.read(&self.shared.limits).now_or_never()
    }

    async fn send_kicked(&mut self, reason: &str) -> Result<(), ()> {
        let frame = Frame::Kicked(Kicked {
            reason: reason.to_owned(),
            message: match reason {
                "replaced" => "the same client_id connected again".to_owned(),
                _ => format!("closed by the server: {reason}"),
            },
        });
        send_now(&self.shared, &mut self.io, &frame).await
    }

    /// Tells the client why the server ends the connection (if it does).
    async fn say_goodbye(&mut self, end: End) {
        match end {
            End::Closed(CloseReason::Kicked(reason)) => {
                info!(reason = %reason, "kicked");
                let _ = self.send_kicked(&reason).await;
            }
            End::Stalled => info!("closing slow consumer: a write stalled"),
            // `go_away` went out while the connection drained (drain.rs).
            End::Shutdown => debug!("closing at the end of the shutdown grace"),
            End::Silent => debug!("closing silent connection after 3 heartbeat intervals"),
            End::ClientLeft => debug!("client disconnected"),
            End::Failed | End::Protocol => debug!("connection ended on error"),
            End::StoreUnavailable => debug!("connection ended: the store failed"),
            End::TokenExpired => debug!("token expired without a refresh"),
        }
    }

    /// Leaves the session table, releases the route if it is still ours, closes.
    async fn finish(&mut self) {
        let client_id = &self.client.client_id;
        self.shared.hub.unregister(client_id, self.client.conn_epoch);
        // A later connect's last_seq may ack only what was written here; a
        // client that acked all of it needs no record. If this write is lost
        // (store down, node killed), the next connect replays duplicates,
        // never loses messages.
        let written = self.sequencer.cursor;
        if written > self.resumed_from.max(self.acked) {
            if let Err(e) = self.shared.store.note_written(client_id, written).await {
                warn!(error = %e, "could not record what this connection was written");
            }
        }
        match self.shared.store.release_route(client_id, &self.route()).await {
            Ok(_) => {}
            // The lease expires on its own; nothing else depends on this delete.
            Err(e) => warn!(error = %e, "route release failed"),
        }
        self.io.shutdown().await;
    }
}
