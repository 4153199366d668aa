//! Batched `sent` marks. Recording that a message reached its access node is
//! bookkeeping for the status API, not part of the ack contract, so marks are
//! queued and written in pipelined batches instead of one round trip each:
//! a batch goes out `LINGER` after its first mark, or sooner when full.
//!
//! Overflow policy: when `CAPACITY` marks are waiting, further marks are
//! dropped (counted in a debug log); those messages show `queued` until acked.

use std::sync::Arc;

use duplex_store::Store;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::now_ms;

const CAPACITY: usize = 65_536;
const BATCH: usize = 1_024;
/// How long the first mark of a batch waits for others. Under light load
/// marks come one by one, and a write of its own costs each of them more
/// than the mark itself (a wakeup of Redis and of the connection on each
/// side; measured at 5,000 pushes/s: ~13 us of duplex and ~14 us of Redis
/// CPU per message, about 2 us of which are the two commands).
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

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
                gather(&mut rx, &mut batch, &shutdown).await;
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

/// Adds the marks that arrive within `LINGER` of the first, up to a batch.
async fn gather(rx: &mut mpsc::Receiver<(String, u64)>, batch: &mut Vec<(String, u64)>, shutdown: &CancellationToken) {
    let deadline = tokio::time::Instant::now() + LINGER;
    while batch.len() < BATCH && !shutdown.is_cancelled() {
        let room = BATCH - batch.len();
        tokio::select! {
            n = rx.recv_many(batch, room) => if n == 0 { return },
            () = tokio::time::sleep_until(deadline) => return,
            () = shutdown.cancelled() => return,
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

    use duplex_store::{MemoryStore, MessageState, QueueLimits, Store};
    use duplex_testkit::message;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn marks_arriving_within_the_linger_share_a_write_and_later_ones_wait() {
        let (tx, mut rx) = mpsc::channel(16);
        let shutdown = CancellationToken::new();
        let base = tokio::time::Instant::now();
        tokio::spawn(async move {
            for (seq, at_ms) in [(2, 5), (3, 19), (4, 30)] {
                tokio::time::sleep_until(base + Duration::from_millis(at_ms)).await;
                let _ = tx.send(("c".to_owned(), seq)).await;
            }
        });
        let mut batch = vec![("c".to_owned(), 1)];
        let started = tokio::time::Instant::now();
        gather(&mut rx, &mut batch, &shutdown).await;
        let seqs: Vec<u64> = batch.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, [1, 2, 3], "the marks of the first 20 ms");
        assert_eq!(started.elapsed(), LINGER);
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_cuts_the_linger_short() {
        let (_tx, mut rx) = mpsc::channel::<(String, u64)>(16);
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut batch = vec![("c".to_owned(), 1)];
        let started = tokio::time::Instant::now();
        gather(&mut rx, &mut batch, &shutdown).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

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
