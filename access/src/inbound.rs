//! What a client sends once its session runs: acks (held, coalesced and
//! stored), token refreshes, uploads and requests handed to the upstream
//! tier (bounded in flight per connection), OS push tokens, pings.

use std::sync::Arc;

use duplex_shared::events::{EventDetail, EventKind};
use duplex_shared::links::LinkError;
use duplex_shared::protocol::{
    Ack, ErrorCode, Frame, Pong, PushRegistered, Refresh, Refreshed, RegisterPush, UploadAck,
};
use duplex_shared::push_tokens::check_push_token;
use duplex_store::PushToken;
use tracing::warn;

use crate::outbox::Outbox;
use crate::send::{body, send_now};
use crate::sequencer::now_ms;
use crate::session::{End, Session, MAX_IN_FLIGHT};

impl Session {
    /// Sends the ack gathered before the connection ended, so that what the
    /// client acknowledged is not delivered again after it reconnects.
    pub(crate) async fn flush_ack(&mut self, ack: Option<Ack>, end: End) -> End {
        let _ = self.store_held_ack(ack).await;
        end
    }

    /// Stores the ack gathered from the frames read so far, if any.
    pub(crate) async fn store_held_ack(&mut self, ack: Option<Ack>) -> Result<(), End> {
        match ack {
            Some(ack) => Box::pin(self.ack(ack)).await,
            None => Ok(()),
        }
    }

    /// A cumulative ack; clamped to what was sent, so a client cannot remove unseen messages.
    pub(crate) async fn ack(&mut self, ack: Ack) -> Result<(), End> {
        let seq = ack.seq.min(self.sequencer.cursor);
        if seq == 0 {
            return Ok(());
        }
        self.shared.metrics.inc("duplex_acks_total", &[]);
        match self.shared.store.ack(&self.client.client_id, seq, now_ms()).await {
            Ok(removed) => {
                self.acked = self.acked.max(seq);
                if let Some(probe) = &self.ack_probe {
                    if seq >= probe.seq {
                        self.shared.push_ack_seconds.observe(probe.written.elapsed());
                        // Dropping it ends the probe's `ack` span, if it has one.
                        self.ack_probe = None;
                    }
                }
                self.shared
                    .metrics
                    .counter("duplex_messages_acked_total", &[])
                    .add(removed as i64);
                if removed > 0 {
                    self.shared
                        .event(EventKind::Acked, &self.client, || EventDetail::Acked {
                            up_to_seq: seq,
                            messages: removed,
                        });
                }
                Ok(())
            }
            Err(e) => {
                self.shared
                    .metrics
                    .inc("duplex_store_errors_total", &[("tier", "access")]);
                // The client keeps its state and acks again later (acks are cumulative).
                let f = ErrorCode::StoreUnavailable.frame(Some(ack.id), e.to_string(), false);
                send_now(&self.shared, &mut self.io, &f).await.map_err(|()| End::Failed)
            }
        }
    }

    /// Tells the client the store failed and ends the connection; it reconnects and resumes.
    pub(crate) async fn store_failed(&mut self, id: Option<u64>, e: &duplex_store::StoreError) -> End {
        warn!(error = %e, "store failed while delivering");
        self.shared
            .metrics
            .inc("duplex_store_errors_total", &[("tier", "access")]);
        let f = ErrorCode::StoreUnavailable.frame(id, "the message store is unavailable, reconnect later", true);
        let _ = send_now(&self.shared, &mut self.io, &f).await;
        End::StoreUnavailable
    }

    /// A new token for this connection: same user (and client id, if it
    /// names one). A refused refresh leaves the current token in force.
    pub(crate) fn refresh(&mut self, refresh: Refresh) -> Frame {
        match self.shared.verifier.verify_for(&refresh.token, &self.client.client_id) {
            Ok(claims) if *claims.sub == *self.client.user_id => {
                self.token.refreshed(claims.exp, &self.shared.clock);
                Frame::Refreshed(Refreshed {
                    id: refresh.id,
                    token_expires_at: claims.exp,
                })
            }
            Ok(_) => ErrorCode::TokenInvalid.frame(
                Some(refresh.id),
                "the new token is for another user than this connection's",
                false,
            ),
            Err(e) => e.code.frame(Some(refresh.id), e.message, false),
        }
    }

    /// Acts on one client frame; returns an immediate answer, if any.
    pub(crate) fn handle(&self, frame: Frame, outbox: &Arc<Outbox>) -> Option<Frame> {
        match frame {
            Frame::Ping(p) => Some(Frame::Pong(Pong { id: p.id })),
            Frame::Pong(p) => Some(ErrorCode::UnexpectedFrame.frame(
                Some(p.id),
                "pong frames are sent by the server, not the client",
                false,
            )),
            Frame::Ack(_) => None,
            Frame::Upload(upload) => {
                let id = upload.id;
                if !outbox.start_call(MAX_IN_FLIGHT) {
                    return Some(too_many_in_flight(id));
                }
                let (upstream, from, outbox) = (self.shared.upstream.clone(), self.context(), outbox.clone());
                let frames_out = self.shared.frames_out.clone();
                // The call outlives a disconnect on purpose: the backend still gets
                // the upload, and the client's resend carries the same idempotency key.
                tokio::spawn(async move {
                    let answer = match contained(upstream.upload(&from, upload)).await {
                        Ok(ack) => Frame::UploadAck(UploadAck { id, ..ack }),
                        Err(e) => link_error(id, &e),
                    };
                    frames_out.frame(&answer);
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
                let (upstream, from, outbox) = (self.shared.upstream.clone(), self.context(), outbox.clone());
                let frames_out = self.shared.frames_out.clone();
                tokio::spawn(async move {
                    if let Err(e) = contained(upstream.request(&from, request)).await {
                        let refusal = link_error(id, &e);
                        frames_out.frame(&refusal);
                        outbox.push_answer(body(&refusal));
                    }
                    outbox.end_call();
                });
                None
            }
            Frame::RegisterPush(register) => self.register_push(register, outbox),
            Frame::Connect(c) => Some(ErrorCode::UnexpectedFrame.frame(Some(c.id), "already connected", false)),
            other => Some(ErrorCode::UnexpectedFrame.frame(
                None,
                format!("{} frames are sent by the server, not the client", other.type_name()),
                false,
            )),
        }
    }
}

impl Session {
    /// Stores one of this install's OS push tokens with the connection's
    /// client id (checked as the push API checks them); the answer comes
    /// through the outbox once the store has it. Counts as a call in flight.
    fn register_push(&self, register: RegisterPush, outbox: &Arc<Outbox>) -> Option<Frame> {
        let id = register.id;
        let (provider, token, app) =
            match check_push_token(&register.provider, &register.token, register.app.as_deref()) {
                Ok(checked) => checked,
                Err(why) => return Some(ErrorCode::BadPushToken.frame(Some(id), why, false)),
            };
        if !outbox.start_call(MAX_IN_FLIGHT) {
            return Some(too_many_in_flight(id));
        }
        let (store, client_id, outbox) = (
            self.shared.store.clone(),
            self.client.client_id.to_string(),
            outbox.clone(),
        );
        let frames_out = self.shared.frames_out.clone();
        tokio::spawn(async move {
            let token = PushToken {
                provider,
                token,
                app,
                registered_ms: now_ms(),
            };
            let answer = match store.register_push_token(&client_id, &token).await {
                Ok(()) => Frame::PushRegistered(PushRegistered { id }),
                Err(e) => ErrorCode::StoreUnavailable.frame(Some(id), e.to_string(), false),
            };
            frames_out.frame(&answer);
            outbox.push_answer(body(&answer));
            outbox.end_call();
        });
        None
    }
}

fn too_many_in_flight(id: u64) -> Frame {
    ErrorCode::RateLimited.frame(
        Some(id),
        format!("at most {MAX_IN_FLIGHT} uploads and requests may be in flight per connection"),
        false,
    )
}

/// A call that panicked answers as an internal error: the client gets its
/// answer frame and the in-flight slot is given back.
async fn contained<T>(call: impl std::future::Future<Output = Result<T, LinkError>>) -> Result<T, LinkError> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .await
        .unwrap_or_else(|_| {
            warn!("a client call panicked inside the gateway; answered as an internal error");
            Err(LinkError::Internal("the call failed inside the gateway".into()))
        })
}

fn link_error(id: u64, e: &LinkError) -> Frame {
    let code = match e {
        LinkError::Rejected(_) => ErrorCode::Rejected,
        LinkError::Internal(_) => ErrorCode::Internal,
        _ => ErrorCode::UpstreamUnavailable,
    };
    code.frame(Some(id), e.to_string(), false)
}
