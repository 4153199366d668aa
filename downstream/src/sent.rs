//! Batched `sent` marks. Recording that a message reached its access node is
//! bookkeeping for the status API, not part of the ack contract, so marks are
//! queued and written in pipelined batches instead of one round trip each.
//!
//! Overflow policy: when `CAPACITY` marks are waiting, further marks are
//! dropped (counted in a debug log); those messages show `queued` until acked.

use std::sync::Arc;

use duplex_shared::store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::now_ms;

const CAPACITY: usize = 65_536;
const BATCH: usize = 1_024;

#[derive(Clone)]
pub struct SentMarks {
    tx: mpsc::Sender<(String, u64)>,
}

impl SentMarks {
    /// Starts the writer; it stops after `shutdown`, writing what is queued.
    pub fn start(store: Arc<dyn Store>, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, u64)>(CAPACITY);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH);
            loop {
                let n = tokio::select! {
                    n = rx.recv_many(&mut batch, BATCH) => n,
                    _ = shutdown.cancelled() => rx.recv_many(&mut batch, BATCH).await,
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
        SentMarks { tx }
    }

    pub fn mark(&self, client_id: &str, seq: u64) {
        if self.tx.try_send((client_id.to_owned(), seq)).is_err() {
            tracing::debug!("sent-mark queue full; mark dropped");
        }
    }
}
