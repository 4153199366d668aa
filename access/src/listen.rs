//! Accept loops for the TCP and WebSocket listeners.
//!
//! The unauthenticated-socket caps (`preauth`) and the connection limit are
//! checked right after accept: a client over one gets a `rate_limited` or
//! `server_full` error frame (retryable) instead of a silent drop or an
//! unbounded wait in the backlog. Refusals themselves are
//! bounded: beyond `MAX_REFUSING` in progress, extra sockets are just closed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use duplex_shared::protocol::{encode_tcp, ErrorCode, Frame};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::either::Either;
use tracing::{debug, warn, Instrument};

use crate::conn::start;
use crate::preauth::Refusal;
use crate::send::body;
use crate::transport::{ws_config, Transport, TransportKind};
use crate::Shared;

/// Refusals (over-limit WebSocket handshakes) handled at once.
pub(crate) const MAX_REFUSING: usize = 256;

pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, kind: TransportKind) {
    loop {
        let accepted = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors or a transient error: back off briefly
                // rather than spin on a listener that keeps failing.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let preauth = match shared.preauth.admit(peer.ip(), Instant::now()) {
            Ok(guard) => guard,
            Err(why) => {
                let frame = match why {
                    Refusal::NodeFull => server_full(),
                    Refusal::SourceLimited => source_limited(),
                };
                refuse(&shared, stream, kind, frame);
                continue;
            }
        };
        let Ok(permit) = shared.permits.clone().try_acquire_owned() else {
            refuse(&shared, stream, kind, server_full());
            continue;
        };
        let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
        let auth_deadline = Instant::now() + Duration::from_millis(shared.config.auth_timeout_ms);
        // The setup's inputs in one box: what a task's future captures stays
        // in it for the task's life, so it captures only this pointer.
        let setup = Box::new(Setup {
            shared: shared.clone(),
            stream,
            kind,
            auth_deadline,
            conn_id,
            peer,
            preauth,
            permit,
        });
        shared.tracker.spawn(async move {
            // Boxed: the setup's state is freed before the session runs, so
            // the task holds only the session's.
            let Some((mut session, opening)) = Box::pin(setup.start()).await else {
                return;
            };
            if session.open(opening).await {
                session.run().await;
            }
        });
    }
}

/// An accepted socket, before its connection is set up.
struct Setup {
    shared: Arc<Shared>,
    stream: TcpStream,
    kind: TransportKind,
    auth_deadline: Instant,
    conn_id: u64,
    peer: std::net::SocketAddr,
    preauth: crate::preauth::PreAuthGuard,
    /// The connection's slot under the limit, held by its session.
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Setup {
    /// The TLS and WebSocket handshakes (inside the auth timeout, holding the
    /// socket's pre-auth slot), then authentication and the route claim.
    /// Runs in the connection's `conn` span; the session's span is its
    /// child, so the session's logs still name the peer.
    async fn start(self: Box<Self>) -> Option<(Box<crate::session::Session>, Box<crate::session::Opening>)> {
        let span = tracing::debug_span!("conn", conn_id = self.conn_id, peer = %self.peer, transport = ?self.kind);
        async move {
            let setup = *self;
            let (shared, deadline) = (setup.shared, setup.auth_deadline);
            let io = open(&shared, setup.stream, setup.kind, deadline).await?;
            start(shared, io, deadline, setup.conn_id, setup.preauth, setup.permit).await
        }
        .instrument(span)
        .await
    }
}

/// The transport of an accepted socket: the TLS handshake (TLS listeners),
/// then the WebSocket upgrade (WebSocket listeners), both by `deadline`.
/// `None` if one failed or took too long.
async fn open(shared: &Shared, stream: TcpStream, kind: TransportKind, deadline: Instant) -> Option<Transport> {
    let _ = stream.set_nodelay(true);
    let stream = match (kind, &shared.tls) {
        (TransportKind::Tcp, _) => return Some(Transport::tcp(stream)),
        (TransportKind::WebSocket, _) => Either::Left(stream),
        (TransportKind::Tls | TransportKind::Wss, None) => return None,
        (TransportKind::Tls | TransportKind::Wss, Some(certs)) => {
            let acceptor = if kind == TransportKind::Tls {
                certs.tcp()
            } else {
                certs.wss()
            };
            // Boxed: the handshake is transient and its state is large.
            match Box::pin(tokio::time::timeout_at(deadline, acceptor.accept(stream))).await {
                Ok(Ok(tls)) if kind == TransportKind::Tls => return Some(Transport::tls(tls)),
                Ok(Ok(tls)) => Either::Right(Box::new(tls)),
                Ok(Err(e)) => {
                    debug!(error = %e, "TLS handshake failed");
                    shared
                        .metrics
                        .inc("duplex_tls_handshake_failures_total", &[("reason", "refused")]);
                    return None;
                }
                Err(_) => {
                    debug!("TLS handshake timed out");
                    shared
                        .metrics
                        .inc("duplex_tls_handshake_failures_total", &[("reason", "timeout")]);
                    return None;
                }
            }
        }
    };
    let handshake = tokio_tungstenite::accept_async_with_config(
        stream,
        Some(ws_config(&shared.limits, shared.config.ws_read_buffer_bytes)),
    );
    match Box::pin(tokio::time::timeout_at(deadline, handshake)).await {
        Ok(Ok(ws)) => Some(Transport::Ws(Box::new(ws))),
        Ok(Err(e)) => {
            debug!(error = %e, "websocket handshake failed");
            None
        }
        Err(_) => {
            debug!("websocket handshake timed out");
            None
        }
    }
}

fn server_full() -> Frame {
    ErrorCode::ServerFull.frame(
        None,
        "this node is at its connection limit; try again later or another node",
        true,
    )
}

fn source_limited() -> Frame {
    ErrorCode::RateLimited.frame(
        None,
        "too many connections from this address are being set up; retry later",
        true,
    )
}

fn refuse(shared: &Arc<Shared>, stream: TcpStream, kind: TransportKind, refusal: Frame) {
    debug!("refusing connection over a limit");
    if let Frame::Error(e) = &refusal {
        shared.metrics.inc("duplex_auth_failures_total", &[("code", &e.code)]);
    }
    shared.frames_out.count("error");
    match kind {
        TransportKind::Tcp => {
            // The socket's send buffer is empty, so a small frame fits without waiting.
            let mut out = Vec::new();
            encode_tcp(&refusal, &mut out);
            let _ = stream.try_write(&out);
        }
        // A refusal over WebSocket or TLS needs a handshake first: bounded
        // in time and in how many run at once.
        TransportKind::WebSocket | TransportKind::Tls | TransportKind::Wss => {
            let Ok(slot) = shared.refusing.clone().try_acquire_owned() else {
                return;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let deadline = Instant::now() + Duration::from_secs(2);
                if let Some(mut io) = open(&shared, stream, kind, deadline).await {
                    let _ = tokio::time::timeout(Duration::from_secs(2), io.write(&[body(&refusal)])).await;
                    io.shutdown().await;
                }
            });
        }
    }
}
