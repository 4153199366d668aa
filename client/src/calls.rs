//! Uploads and requests of a reconnecting `Client`. Each call gets an id once
//! and keeps it: a call that has no answer when the connection drops is sent
//! again, with the same id, on the next connection. The server deduplicates
//! by (client, id), so a resend never reaches the backend twice, and the
//! answer (an `upload_ack`, or a `reply` that may arrive on a later
//! connection) is matched by id.

use std::collections::BTreeMap;

use duplex_protocol::{ErrorFrame, Frame, Reply, UploadAck};

use tokio::sync::oneshot;

/// A call that ended without the answer it asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The server refused it; `retry` says whether sending it again later may succeed.
    #[error("refused ({code}): {message}")]
    Refused { code: String, message: String, retry: bool },
    /// No answer within the call timeout (`ClientOptions::call_timeout`); an upload
    /// may still have reached the backend, and resending it with a new call is safe
    /// only if the backend deduplicates by content.
    #[error("no answer in time")]
    Timeout,
    /// The client stopped (dropped, or replaced by another instance).
    #[error("the client stopped")]
    Stopped,
}

pub(crate) enum Answer {
    Upload(UploadAck),
    Reply(Reply),
    PushRegistered,
}

/// A call on its way from the application to the connection task.
pub(crate) struct Outgoing {
    pub frame: Frame,
    pub answer: oneshot::Sender<Result<Answer, CallError>>,
}

fn id_of(frame: &Frame) -> u64 {
    match frame {
        Frame::Upload(u) => u.id,
        Frame::Request(r) => r.id,
        Frame::RegisterPush(r) => r.id,
        _ => 0,
    }
}

/// Calls sent and not answered yet, by id (so resends go out in call order).
#[derive(Default)]
pub(crate) struct InFlight {
    calls: BTreeMap<u64, Outgoing>,
}

impl InFlight {
    pub fn add(&mut self, call: Outgoing) {
        self.calls.insert(id_of(&call.frame), call);
    }

    /// The frames to send again on a new connection; calls whose caller gave up are dropped.
    pub fn unanswered(&mut self) -> Vec<Frame> {
        self.calls.retain(|_, c| !c.answer.is_closed());
        self.calls.values().map(|c| c.frame.clone()).collect()
    }

    pub fn upload_acked(&mut self, ack: UploadAck) {
        if let Some(c) = self.calls.remove(&ack.id) {
            let _ = c.answer.send(Ok(Answer::Upload(ack)));
        }
    }

    pub fn push_registered(&mut self, id: u64) {
        if let Some(c) = self.calls.remove(&id) {
            let _ = c.answer.send(Ok(Answer::PushRegistered));
        }
    }

    pub fn replied(&mut self, reply: Reply) {
        if let Some(c) = self.calls.remove(&reply.id) {
            let _ = c.answer.send(Ok(Answer::Reply(reply)));
        }
    }

    /// An error frame naming one of our calls ends it.
    pub fn refused(&mut self, e: &ErrorFrame) {
        if let Some(c) = e.id.and_then(|id| self.calls.remove(&id)) {
            let _ = c.answer.send(Err(CallError::Refused {
                code: e.code.clone(),
                message: e.message.clone(),
                retry: e.retry,
            }));
        }
    }
}

/// What the application asks of the connection task.
pub(crate) enum Command {
    Call(Outgoing),
    Ack(u64),
}
