//! Requests: the backend's response becomes a `Reply` stored for the client
//! (TTL = the request deadline) and delivered wherever it is connected then.
//! The access tier gets its answer at once; the backend call runs on its own
//! task, bounded by `max_requests_in_flight`. A deadline that passes, or a
//! pool with nothing available, still answers: a reply with status 504 or 503
//! and an `x-duplex-error` header.

use std::time::Duration;

use duplex_shared::links::{ClientContext, LinkError, ReplyLink};
use duplex_shared::protocol::{Headers, Reply, Request};
use duplex_shared::trace::{continue_from, outgoing_traceparent};
use duplex_store::{now_ms, FrameClaim};
use reqwest::Method;
use tokio::time::Instant;
use tracing::Instrument;

use crate::call::{idempotency_key, BackendResponse, Call, CallError, ReplyKind};
use crate::{store_unavailable, Upstream};

/// A claim outlives the deadline by this much, so a resend that races a slow reply stays quiet.
const CLAIM_SLACK_MS: u64 = 5_000;

fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// How a request reached this node.
#[derive(Debug, Clone, Copy, Default)]
pub struct Forwarded {
    /// Answer only once the reply is handed to downstream, so the access node
    /// that forwarded the request learns when this node dies before that.
    pub wait_for_reply: bool,
    /// The node that had the request first was lost mid-call: take its claim
    /// over when a repeat is safe, else answer with a `upstream_lost` reply.
    pub takeover: bool,
}

impl Upstream {
    pub(crate) async fn request_frame(
        &self,
        from: &ClientContext,
        req: Request,
        how: Forwarded,
    ) -> Result<(), LinkError> {
        let service = self.service(&req.service)?;
        if service.config.endpoints.is_empty() {
            return Err(LinkError::Rejected(format!(
                "service {:?} takes uploads only (its uploads go to a queue)",
                service.name
            )));
        }
        let method = Method::from_bytes(req.method.to_ascii_uppercase().as_bytes())
            .ok()
            .filter(|m| service.config.methods.iter().any(|allowed| allowed == m.as_str()))
            .ok_or_else(|| {
                LinkError::Rejected(format!(
                    "method {:?} is not allowed on service {:?}; allowed: {:?}",
                    req.method, service.name, service.config.methods
                ))
            })?;
        service
            .check_path(&req.path)
            .map_err(|e| LinkError::Rejected(e.to_string()))?;
        let deadline_ms = match req.timeout_ms {
            0 => service.config.deadline_ms,
            t => t.min(service.config.deadline_ms),
        };
        let permit = self.requests.clone().try_acquire_owned().map_err(|_| {
            LinkError::Unavailable(format!(
                "{} requests are waiting for backends on this node",
                self.config.max_requests_in_flight
            ))
        })?;
        let key = frame_claim_key(&from.user_id, "r", req.id);
        let claim = self
            .store
            .begin_frame(&from.client_id, &key, deadline_ms + CLAIM_SLACK_MS)
            .await
            .map_err(store_unavailable)?;
        let retry_safe = idempotent(&method) || service.config.idempotency_keys;
        if claim != FrameClaim::New {
            if how.takeover && !retry_safe {
                // The backend may or may not have seen it: say so rather than repeat it.
                let (reply, kind) = reply_for(req.id, Err(CallError::Lost));
                service.count_reply(kind);
                deliver_reply(&*self.replies, &from.client_id, reply, deadline_ms).await;
                return Ok(());
            }
            if !how.takeover {
                // A resend: the first copy's reply is on its way (or stored for the client's replay).
                return Ok(());
            }
        }
        let replies = self.replies.clone();
        let from = from.clone();
        let (done, replied) = tokio::sync::oneshot::channel::<()>();
        let span = tracing::debug_span!("request", client_id = %from.client_id, id = req.id, path = %req.path);
        continue_from(&span, req.headers.get("traceparent").map(String::as_str));
        let task = async move {
            let _permit = permit;
            let deadline = Instant::now() + Duration::from_millis(deadline_ms);
            let backend = tracing::debug_span!("backend", method = %method);
            let call = Call {
                retry_safe,
                method,
                path: &req.path,
                headers: &req.headers,
                body: req.body.clone(),
                client_id: &from.client_id,
                user_id: &from.user_id,
                idempotency_key: idempotency_key(&from.client_id, "r", req.id),
                // The backend's parent is the `backend` span when spans are exported.
                traceparent: backend
                    .in_scope(|| outgoing_traceparent(req.headers.get("traceparent").map(String::as_str))),
                deadline,
            };
            let result = match tokio::time::timeout_at(deadline, service.call(&call))
                .instrument(backend)
                .await
            {
                Ok(r) => r,
                Err(_) => Err(CallError::Timeout),
            };
            let (reply, kind) = reply_for(req.id, result);
            service.count_reply(kind);
            // The claim stays until it expires (deadline + slack): a resend meanwhile
            // finds it and waits for this reply instead of calling the backend again.
            deliver_reply(&*replies, &from.client_id, reply, deadline_ms)
                .instrument(tracing::debug_span!("reply"))
                .await;
            let _ = done.send(());
        };
        self.tasks.spawn(task.instrument(span));
        if how.wait_for_reply {
            let _ = replied.await;
        }
        Ok(())
    }
}

/// A frame's claim in its client's store slot. The user is part of the key
/// so a claim can never answer for another user's frame, even if the client
/// id changed hands after its owner's state expired.
pub(crate) fn frame_claim_key(user_id: &str, kind: &str, frame_id: u64) -> String {
    format!("{kind}:{user_id}:{frame_id}")
}

/// The reply for a call's outcome, and which `duplex_replies_total` kind it is.
fn reply_for(id: u64, result: Result<BackendResponse, CallError>) -> (Reply, ReplyKind) {
    let failure = |status: u16, code: &str, message: String, kind: ReplyKind| {
        let mut headers = Headers::new();
        headers.insert("x-duplex-error".into(), code.to_owned());
        let reply = Reply {
            id,
            status,
            headers,
            body: message.into_bytes().into(),
            seq: 0,
        };
        (reply, kind)
    };
    match result {
        Ok(r) => (
            Reply {
                id,
                status: r.status,
                headers: r.headers,
                body: r.body,
                seq: 0,
            },
            ReplyKind::Backend,
        ),
        Err(CallError::Timeout) => failure(504, "timeout", "the request deadline passed".into(), ReplyKind::Timeout),
        Err(CallError::PoolUnavailable) => failure(
            503,
            "unavailable",
            "no backend endpoint of the service is available".into(),
            ReplyKind::Unavailable,
        ),
        Err(e @ CallError::Transport(_)) => failure(502, "backend_error", e.to_string(), ReplyKind::Error),
        Err(CallError::Lost) => failure(
            502,
            "upstream_lost",
            "the upstream node handling this request was lost; the backend may have received it".into(),
            ReplyKind::Error,
        ),
    }
}

/// Hands the reply to downstream; a store outage is retried briefly, since
/// the client is waiting for this reply and nothing else will resend it.
async fn deliver_reply(replies: &dyn ReplyLink, client_id: &str, reply: Reply, ttl_ms: u64) {
    let mut delay = Duration::from_millis(50);
    for attempt in 0..5 {
        match replies.reply(client_id, reply.clone(), now_ms() + ttl_ms).await {
            Ok(()) => return,
            Err(e) if e.retryable() && attempt < 4 => {
                tracing::debug!(error = %e, "reply not stored yet; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => {
                tracing::warn!(error = %e, request = reply.id, "reply lost: the client will see its request time out");
                return;
            }
        }
    }
}
