//! One task per client connection: authenticate, register, then serve until
//! the client leaves, goes silent, is kicked, or the node shuts down.
//!
//! The task owns the socket. It `select!`s over socket reads, its outbox
//! (deliveries, answers of finished backend calls, and the close signal),
//! the silence deadline and node shutdown; every write is bounded by the
//! write timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use duplex_shared::links::{ClientContext, LinkError};
use duplex_shared::protocol::{
    encode_body, valid_client_id, Connect, Connected, ErrorCode, Frame, GoAway, Kicked, Pong, UploadAck,
    PROTOCOL_VERSION,
};
use duplex_shared::store::Route;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::{debug, info, warn, Instrument};

use crate::hub::SessionHandle;
use crate::outbox::{CloseReason, Next, Outbox};
use crate::rate::TokenBucket;
use crate::transport::{ReadEvent, Transport};
use crate::Shared;

/// Backend calls (uploads, requests) one connection may have in flight.
const MAX_IN_FLIGHT: usize = 32;
/// Frames written per batch when the outbound queue has several waiting.
const WRITE_BATCH: usize = 64;

/// Encodes one frame body.
pub(crate) fn body(frame: &Frame) -> Bytes {
    let mut out = Vec::new();
    encode_body(frame, &mut out);
    Bytes::from(out)
}

/// Serves one accepted connection; `permit` is its slot under the connection limit.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    mut io: Transport,
    auth_deadline: Instant,
    conn_id: u64,
    _permit: OwnedSemaphorePermit,
) {
    let Some((connect, claims)) = Box::pin(authenticate(&shared, &mut io, auth_deadline)).await else {
        io.shutdown().await;
        return;
    };
    let client_id = connect.client_id;
    let claim = match shared
        .store
        .claim_route(&client_id, &claims.sub, &shared.node_id, shared.route_ttl())
        .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(conn_id, error = %e, "route write failed, refusing connection");
            let msg = "the route store is unavailable, try again later";
            let _ = send_now(
                &shared,
                &mut io,
                &ErrorCode::StoreUnavailable.frame(Some(connect.id), msg, true),
            )
            .await;
            io.shutdown().await;
            return;
        }
    };
    let span = tracing::info_span!("session", conn_id, epoch = claim.route.conn_epoch);
    // Boxed so the serving phase's state is one allocation that does not
    // also carry the (dead) authentication phase's locals.
    let session = Box::new(Session {
        shared,
        io,
        client: ClientContext {
            client_id,
            user_id: claims.sub,
            route: claim.route,
        },
        connect_id: connect.id,
        previous: claim.previous,
    });
    Box::pin(session.run().instrument(span)).await;
}

/// Reads and checks `Connect`; on failure the client has been told why.
async fn authenticate(
    shared: &Shared,
    io: &mut Transport,
    deadline: Instant,
) -> Option<(Connect, duplex_shared::auth::Claims)> {
    let refuse = |code: ErrorCode, id: Option<u64>, msg: String| code.frame(id, msg, true);
    let frame = match tokio::time::timeout_at(deadline, io.read(&shared.limits)).await {
        Err(_) => {
            debug!("no Connect within the auth timeout");
            let f = refuse(
                ErrorCode::AuthTimeout,
                None,
                "no Connect frame within the auth timeout".into(),
            );
            let _ = send_now(shared, io, &f).await;
            return None;
        }
        Ok(ReadEvent::Frame(f)) => f,
        Ok(ReadEvent::Invalid(e)) => {
            let _ = send_now(shared, io, &e.code().frame(None, e.to_string(), true)).await;
            return None;
        }
        Ok(ReadEvent::Closed | ReadEvent::Failed(_)) => return None,
    };
    let connect = match frame {
        Frame::Connect(c) => c,
        other => {
            let msg = format!("the first frame must be connect, got {}", other.type_name());
            let _ = send_now(shared, io, &refuse(ErrorCode::UnexpectedFrame, None, msg)).await;
            return None;
        }
    };
    let id = Some(connect.id);
    let failure = if connect.version != PROTOCOL_VERSION {
        Some(refuse(
            ErrorCode::UnsupportedVersion,
            id,
            format!(
                "protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}",
                connect.version
            ),
        ))
    } else if !valid_client_id(&connect.client_id) {
        Some(refuse(
            ErrorCode::InvalidClientId,
            id,
            "client_id must be 1..=128 bytes of [A-Za-z0-9._:-]".into(),
        ))
    } else {
        match shared.verifier.verify(&connect.token) {
            Ok(claims) => return Some((connect, claims)),
            Err(e) => {
                debug!(code = e.code.as_str(), "token rejected");
                Some(refuse(e.code, id, e.message))
            }
        }
    };
    if let Some(f) = failure {
        let _ = send_now(shared, io, &f).await;
    }
    None
}

/// Writes one frame immediately, bounded by the write timeout.
///
/// Boxed, like every transient await of a connection task: an async fn's
/// state is as large as its largest await, and idle connections would carry
/// that size for their whole life.
fn send_now<'a>(shared: &Shared, io: &'a mut Transport, frame: &Frame) -> BoxFuture<'a, Result<(), ()>> {
    let write = timeout(shared.write_timeout(), io.write_owned(vec![body(frame)]));
    Box::pin(async move {
        match write.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    })
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

struct Session {
    shared: Arc<Shared>,
    io: Transport,
    client: ClientContext,
    connect_id: u64,
    previous: Option<Route>,
}

/// Why the serving loop ended.
enum End {
    ClientLeft,
    Failed,
    Silent,
    Closed(CloseReason),
    Shutdown,
    Protocol,
}

impl Session {
    async fn run(mut self: Box<Self>) {
        let shared = self.shared.clone();
        let outbox = Arc::new(Outbox::new(shared.config.outbound_queue));
        let handle = SessionHandle {
            conn_epoch: self.client.route.conn_epoch,
            user_id: Arc::from(self.client.user_id.as_str()),
            outbox: outbox.clone(),
            connected_at_ms: duplex_shared::auth::unix_now() * 1000,
        };
        if shared.hub.register(&self.client.client_id, handle).is_err() {
            debug!("a newer connection of this client already won");
            let _ = self.send_kicked("replaced").await;
            self.finish().await;
            return;
        }
        self.kick_previous();
        let connected = &Frame::Connected(Connected {
            id: self.connect_id,
            session_id: self.client.route.encode(),
            node_id: shared.node_id.clone(),
            heartbeat_ms: shared.config.heartbeat_ms,
            reconnect_min_ms: shared.config.reconnect_min_ms,
            reconnect_max_ms: shared.config.reconnect_max_ms,
            max_frame_bytes: shared.limits.max_frame_bytes,
        });
        let sent = send_now(&shared, &mut self.io, connected);
        let end = if sent.await.is_err() {
            End::Failed
        } else {
            debug!(user_id = %self.client.user_id, "connected");
            self.serve(&outbox).await
        };
        Box::pin(self.say_goodbye(end)).await;
        Box::pin(self.finish()).await;
    }

    /// Closes the connection this one replaced, wherever it is.
    fn kick_previous(&self) {
        let Some(prev) = self.previous.clone() else { return };
        if prev.node_id == self.shared.node_id {
            self.shared
                .hub
                .kick_local(&self.client.client_id, prev.conn_epoch, "replaced");
            return;
        }
        let nodes = self.shared.nodes.clone();
        let client_id = self.client.client_id.clone();
        tokio::spawn(async move {
            if let Err(e) = nodes.kick(&client_id, &prev, "replaced").await {
                // The old node is gone or unreachable; its connection (if any)
                // lost its route and cannot receive deliveries any more.
                warn!(node = %prev.node_id, error = %e, "could not kick the replaced connection");
            }
        });
    }

    async fn serve(&mut self, outbox: &Arc<Outbox>) -> End {
        let shared = self.shared.clone();
        let silence_limit = 3 * shared.config.heartbeat();
        let silence = sleep_until(Instant::now() + silence_limit);
        tokio::pin!(silence);
        let mut bucket = TokenBucket::new(shared.config.frame_rate_per_s, shared.config.frame_burst);
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                biased;
                _ = shared.shutdown.cancelled() => return End::Shutdown,
                next = outbox.next(&mut batch, WRITE_BATCH) => {
                    if let Next::Close(reason) = next {
                        return End::Closed(reason);
                    }
                    let frames = std::mem::take(&mut batch);
                    let written = Box::pin(timeout(shared.write_timeout(), self.io.write_owned(frames))).await;
                    if !matches!(written, Ok(Ok(()))) {
                        return End::Failed;
                    }
                }
                event = self.io.read(&shared.limits) => {
                    silence.as_mut().reset(Instant::now() + silence_limit);
                    let frame = match event {
                        ReadEvent::Frame(f) => f,
                        ReadEvent::Closed => return End::ClientLeft,
                        ReadEvent::Failed(e) => {
                            debug!(error = %e, "read failed");
                            return End::Failed;
                        }
                        ReadEvent::Invalid(e) => {
                            debug!(error = %e, "invalid frame");
                            let close_after = e.must_close();
                            let f = e.code().frame(None, e.to_string(), close_after);
                            if send_now(&shared, &mut self.io, &f).await.is_err() || close_after {
                                return End::Protocol;
                            }
                            continue;
                        }
                    };
                    if !bucket.take(Instant::now()) {
                        let f = ErrorCode::RateLimited.frame(None, "frame rate limit exceeded", true);
                        let _ = send_now(&shared, &mut self.io, &f).await;
                        return End::Protocol;
                    }
                    if let Some(reply) = self.handle(frame, outbox) {
                        if send_now(&shared, &mut self.io, &reply).await.is_err() {
                            return End::Failed;
                        }
                    }
                }
                _ = &mut silence => return End::Silent,
            }
        }
    }

    /// Acts on one client frame; returns an immediate answer, if any.
    fn handle(&self, frame: Frame, outbox: &Arc<Outbox>) -> Option<Frame> {
        match frame {
            Frame::Ping(p) => Some(Frame::Pong(Pong { id: p.id })),
            Frame::Pong(_) => None,
            // Stored messages and their acks belong to the downstream tier;
            // until it keeps them, an ack has nothing to remove.
            Frame::Ack(_) => None,
            Frame::Upload(upload) => {
                let id = upload.id;
                if !outbox.start_call(MAX_IN_FLIGHT) {
                    return Some(too_many_in_flight(id));
                }
                let (upstream, from, outbox) = (self.shared.upstream.clone(), self.client.clone(), outbox.clone());
                // The call outlives a disconnect on purpose: the backend still gets
                // the upload, and the client's resend carries the same idempotency key.
                tokio::spawn(async move {
                    let answer = match upstream.upload(&from, upload).await {
                        Ok(ack) => Frame::UploadAck(UploadAck { id, ..ack }),
                        Err(e) => link_error(id, &e),
                    };
                    outbox.push_answer(body(&answer));
                    outbox.end_call();
                });
                None
            }
            Frame::Request(request) => {
                let id = request.id;
                if !outbox.start_call(MAX_IN_FLIGHT) {
                    return Some(too_many_in_flight(id));
                }
                let (upstream, from, outbox) = (self.shared.upstream.clone(), self.client.clone(), outbox.clone());
                tokio::spawn(async move {
                    if let Err(e) = upstream.request(&from, request).await {
                        outbox.push_answer(body(&link_error(id, &e)));
                    }
                    outbox.end_call();
                });
                None
            }
            Frame::Connect(c) => Some(ErrorCode::UnexpectedFrame.frame(Some(c.id), "already connected", false)),
            other => Some(ErrorCode::UnexpectedFrame.frame(
                None,
                format!("{} frames are sent by the server, not the client", other.type_name()),
                false,
            )),
        }
    }

    async fn send_kicked(&mut self, reason: &str) -> Result<(), ()> {
        let frame = Frame::Kicked(Kicked {
            reason: reason.to_owned(),
            message: match reason {
                "replaced" => "the same client_id connected again".to_owned(),
                "slow_consumer" => "the connection did not read its messages fast enough".to_owned(),
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
            End::Closed(CloseReason::SlowConsumer) => {
                info!("closing slow consumer");
                let _ = self.send_kicked("slow_consumer").await;
            }
            End::Shutdown => {
                let window = self.shared.config.goaway_window_ms.max(1);
                let frame = Frame::GoAway(GoAway {
                    reconnect_after_ms: rand::random::<u64>() % window,
                    endpoints: Vec::new(),
                });
                let _ = send_now(&self.shared, &mut self.io, &frame).await;
            }
            End::Silent => debug!("closing silent connection after 3 heartbeat intervals"),
            End::ClientLeft => debug!("client disconnected"),
            End::Failed | End::Protocol => debug!("connection ended on error"),
        }
    }

    /// Leaves the session table, releases the route if it is still ours, closes.
    async fn finish(&mut self) {
        let client_id = &self.client.client_id;
        self.shared.hub.unregister(client_id, self.client.route.conn_epoch);
        match self.shared.store.release_route(client_id, &self.client.route).await {
            Ok(_) => {}
            // The lease expires on its own; nothing else depends on this delete.
            Err(e) => warn!(error = %e, "route release failed"),
        }
        self.io.shutdown().await;
    }
}

fn too_many_in_flight(id: u64) -> Frame {
    ErrorCode::RateLimited.frame(
        Some(id),
        format!("at most {MAX_IN_FLIGHT} uploads and requests may be in flight per connection"),
        false,
    )
}

fn link_error(id: u64, e: &LinkError) -> Frame {
    let code = match e {
        LinkError::Rejected(_) => ErrorCode::Rejected,
        _ => ErrorCode::UpstreamUnavailable,
    };
    code.frame(Some(id), e.to_string(), false)
}

impl Shared {
    pub(crate) fn route_ttl(&self) -> Duration {
        Duration::from_millis(self.config.route_ttl_ms)
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.config.write_timeout_ms)
    }
}
