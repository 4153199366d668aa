//! The start of every client connection: read `connect` within the auth
//! timeout, verify the token, claim the route, then hand over to `session`.

use std::sync::Arc;
use std::time::Duration;

use duplex_shared::protocol::{valid_client_id, Connect, ErrorCode, Frame, MAX_LAST_SEQ, PROTOCOL_VERSION};
use duplex_store::ClaimError;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::outbox::Outbox;
use crate::preauth::PreAuthGuard;
use crate::send::send_now;
use crate::sequencer::Sequencer;
use crate::session::{Client, Opening, Session};
use crate::token_life::TokenLife;
use crate::transport::{ReadEvent, Transport};
use crate::Shared;

/// Authenticates an accepted connection and claims its route: the session
/// to run, or `None` when the client was refused (and told why). `preauth`
/// is its slot until it authenticates.
///
/// The caller awaits this boxed and runs the session in the connection's
/// task itself: the task then carries only the session's state, not also
/// that of this phase.
pub(crate) async fn start(
    shared: Arc<Shared>,
    mut io: Transport,
    auth_deadline: Instant,
    conn_id: u64,
    preauth: PreAuthGuard,
    permit: OwnedSemaphorePermit,
) -> Option<(Box<Session>, Box<Opening>)> {
    let Some((connect, claims)) = Box::pin(authenticate(&shared, &mut io, auth_deadline)).await else {
        io.shutdown().await;
        return None;
    };
    // Authenticated: no longer counted against the unauthenticated caps.
    drop(preauth);
    let client_id = connect.client_id;
    let claim = match shared
        .store
        .claim_route_after(
            &client_id,
            &claims.sub,
            &shared.node_id,
            shared.route_ttl(),
            connect.last_seq,
        )
        .await
    {
        Ok(c) => c,
        Err(ClaimError::Taken) => {
            debug!(conn_id, "client id belongs to another user, refusing connection");
            let msg = "this client_id belongs to another user";
            let _ = send_refusal(
                &shared,
                &mut io,
                &ErrorCode::ClientIdTaken.frame(Some(connect.id), msg, true),
            )
            .await;
            io.shutdown().await;
            return None;
        }
        Err(ClaimError::Store(e)) => {
            warn!(conn_id, error = %e, "route write failed, refusing connection");
            let msg = "the route store is unavailable, try again later";
            let _ = send_now(
                &shared,
                &mut io,
                &ErrorCode::StoreUnavailable.frame(Some(connect.id), msg, true),
            )
            .await;
            io.shutdown().await;
            return None;
        }
    };
    let span = tracing::info_span!("session", conn_id, epoch = claim.route.conn_epoch);
    let outbound_queue = shared.config.outbound_queue;
    let serving = crate::serve::Serving::new();
    let token = TokenLife::new(claims.exp, &shared.clock);
    // The slot is the session's now; it gives it back when dropped.
    permit.forget();
    let opening = Box::new(Opening {
        connect_id: connect.id,
        previous: claim.previous,
        token_expires_at: claims.exp,
    });
    let session = Box::new(Session {
        shared,
        io,
        client: Client {
            client_id: client_id.into_boxed_str(),
            user_id: claims.sub.into_boxed_str(),
            conn_epoch: claim.route.conn_epoch,
        },
        sequencer: Sequencer::new(connect.last_seq),
        resumed_from: 0,
        acked: 0,
        ack_probe: None,
        outbox: Arc::new(Outbox::new(outbound_queue)),
        token,
        serving,
        span,
        connected_at_ms: 0,
    });
    Some((session, opening))
}

/// WebSocket control messages tolerated before `connect`.
const MAX_CONTROLS_BEFORE_CONNECT: u32 = 8;

/// Reads and checks `Connect`; on failure the client has been told why.
async fn authenticate(
    shared: &Shared,
    io: &mut Transport,
    deadline: Instant,
) -> Option<(Connect, crate::auth::Claims)> {
    let refuse = |code: ErrorCode, id: Option<u64>, msg: String| code.frame(id, msg, true);
    // A few control messages (WebSocket pings) may come first; a stream of
    // them is no way to hold an unauthenticated socket.
    let mut controls = 0;
    let frame = loop {
        match tokio::time::timeout_at(deadline, io.read(&shared.limits)).await {
            Ok(ReadEvent::Control) if controls < MAX_CONTROLS_BEFORE_CONNECT => controls += 1,
            Ok(ReadEvent::Control) => {
                let msg = "too many control messages before connect".to_owned();
                let _ = send_refusal(shared, io, &refuse(ErrorCode::RateLimited, None, msg)).await;
                return None;
            }
            other => break other,
        }
    };
    let frame = match frame {
        Err(_) => {
            debug!("no Connect within the auth timeout");
            let f = refuse(
                ErrorCode::AuthTimeout,
                None,
                "no Connect frame within the auth timeout".into(),
            );
            let _ = send_refusal(shared, io, &f).await;
            return None;
        }
        Ok(ReadEvent::Frame(f)) => f,
        Ok(ReadEvent::Invalid(e)) => {
            let _ = send_refusal(shared, io, &e.code().frame(e.id(), e.to_string(), true)).await;
            return None;
        }
        Ok(ReadEvent::Closed | ReadEvent::Failed(_) | ReadEvent::Control) => return None,
    };
    let connect = match frame {
        Frame::Connect(c) => c,
        other => {
            let msg = format!("the first frame must be connect, got {}", other.type_name());
            let _ = send_refusal(shared, io, &refuse(ErrorCode::UnexpectedFrame, None, msg)).await;
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
    } else if connect.last_seq > MAX_LAST_SEQ {
        Some(refuse(
            ErrorCode::BadLastSeq,
            id,
            format!("last_seq must be at most {MAX_LAST_SEQ}: no seq above it is ever given out"),
        ))
    } else {
        match shared.verifier.verify_for(&connect.token, &connect.client_id) {
            Ok(claims) => return Some((connect, claims)),
            Err(e) => {
                debug!(code = e.code.as_str(), "token rejected");
                Some(refuse(e.code, id, e.message))
            }
        }
    };
    if let Some(f) = failure {
        let _ = send_refusal(shared, io, &f).await;
    }
    None
}

/// Sends the error frame refusing a connection, and counts it by code.
async fn send_refusal(shared: &Shared, io: &mut Transport, frame: &Frame) -> Result<(), ()> {
    if let Frame::Error(e) = frame {
        shared.metrics.inc("duplex_auth_failures_total", &[("code", &e.code)]);
        // What support asks first about a client that cannot connect: who, how and why.
        let peer = io.peer().map(|p| p.to_string()).unwrap_or_default();
        info!(code = %e.code, %peer, transport = io.kind().label(), "connection refused");
    }
    send_now(shared, io, frame).await
}

impl Shared {
    pub(crate) fn route_ttl(&self) -> Duration {
        Duration::from_millis(self.config.route_ttl_ms)
    }

    pub(crate) fn write_timeout(&self) -> Duration {
        Duration::from_millis(self.config.write_timeout_ms)
    }
}
