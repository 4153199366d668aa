//! Batched `sent` marks. Recording that a message reached its access node is
//! bookkeeping for the status API, not part of the ack contract, so marks are
//! queued and written in pipelined batches instead of one round trip each.
//!
//! Overflow policy: when `CAPACITY` marks are waiting, further marks are
//! dropped (counted in a debug log); those messages show `queued` until acked.

use std::sync::Arc;

use duplex_shared::store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::now_ms;

const CAPACITY: usize = 65_536;
const BATCH: usize = 1_024;

#[derive(Clone)]
pub struct SentMarks {
    tx: mpsc::Sender<(String, u64)>,
}

impl SentMarks {
    /// Starts the writer. After `shutdown` it writes what is queued and
    /// stops; the node awaits the returned handle before it exits.
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken) -> (Self, JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<(String, u64)>(CAPACITY);
        let writer = tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let n = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => n,
                    // Senders live as long as the tier, so an empty queue
                    // means done rather than waiting for more.
                    _ = shutdown.cancelled() => take_queued(&mut rx, &mut batch),
                };
                if n == 0 {
                    return;
                }
                if let Err(e) = store.mark_sent_many(&batch, now_ms()).await {
                    tracing::warn!(error = %e, marks = batch.len(), "could not record sent marks");
                }
                batch.clear();
            }
        });
        (SentMarks { tx }, writer)
    }

    pub fn mark(&self, client_id: &str, seq: u64) {
        if self.tx.try_send((client_id.to_owned(), seq)).is_err() {
            tracing::debug!("sent-mark queue full; mark dropped");
        }
    }
}

/// Moves what is queued, up to a batch, into `batch` without waiting.
fn take_queued(rx: &mut mpsc::Receiver<(String, u64)>, batch: &mut Vec<(String, u64)>) -> usize {
    while batch.len() < BATCH {
        match rx.try_recv() {
            Ok(mark) => batch.push(mark),
            Err(_) => break,
        }
    }
    batch.len()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use duplex_shared::store::{MemoryStore, MessageState, QueueLimits, Store};
    use duplex_shared::testing::message;

    use super::*;

    #[tokio::test]
    async fn shutdown_writes_the_queued_marks_and_then_the_writer_stops() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let now = now_ms();
        let limits = QueueLimits {
            max_messages: 10,
            max_bytes: 10_000,
        };
        for nonce in 1..=3 {
            let mut msg = message(b"x", now, now + 60_000);
            msg.record.nonce = nonce;
            store.enqueue("c", &msg, limits, now).await.expect("enqueue");
        }
        let shutdown = CancellationToken::new();
        let (marks, writer) = SentMarks::start(store.clone(), shutdown.clone());
        for seq in 1..=3 {
            marks.mark("c", seq);
        }
        shutdown.cancel();
        // `marks` is still alive, as the tier's handles are at exit.
        tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writer stops after shutdown")
            .expect("writer task");
        for seq in 1..=3 {
            let status = store
                .message_status("c", seq, seq as u32, now_ms())
                .await
                .expect("status")
                .expect("known message");
            assert_eq!(status.state, MessageState::Sent, "seq {seq}");
        }
        drop(marks);
    }
}
