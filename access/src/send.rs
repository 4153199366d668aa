//! Frames on their way out: a frame's encoded body, and a write of one
//! frame that cannot wait for the outbound queue.

use bytes::Bytes;
use duplex_shared::protocol::{body_capacity, encode_body, Frame};
use tokio::time::timeout;

use crate::transport::Transport;
use crate::Shared;

/// Encodes one frame body.
pub(crate) fn body(frame: &Frame) -> Bytes {
    let mut out = Vec::with_capacity(body_capacity(frame));
    encode_body(frame, &mut out);
    Bytes::from(out)
}

/// Writes one frame immediately, bounded by the write timeout.
///
/// Boxed, like every transient await of a connection task: an async fn's
/// state is as large as its largest await, and idle connections would carry
/// that size for their whole life.
pub(crate) fn send_now<'a>(shared: &Shared, io: &'a mut Transport, frame: &Frame) -> BoxFuture<'a, Result<(), ()>> {
    shared.frames_out.frame(frame);
    let write = timeout(shared.write_timeout(), io.write_owned(vec![body(frame)]));
    Box::pin(async move {
        match write.await {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    })
}

pub(crate) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
