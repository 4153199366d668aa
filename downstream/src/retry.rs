//! Redelivery of stored messages whose delivery failed.
//!
//! One retry loop per client, never per message: it remembers the highest
//! seq that failed and, with exponential backoff and full jitter, hands the
//! first pending message at or above it to the client's current route. The
//! connection's sequencer pulls anything older from the store, so retries
//! never reorder a client's stream. A loop ends when a delivery succeeds,
//! nothing is pending any more (acked or expired), or the client has no route
//! (it gets everything replayed when it connects). Loops are bounded in number;
//! beyond that, the access node's lease renewal (which pulls what a connected
//! client was not handed) and replay on reconnect are the fallback.

use std::sync::Arc;
use std::time::Duration;

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use duplex_shared::links::NodeLink;
use duplex_shared::metrics::{Counter, Metrics};
use duplex_store::Store;
use tokio_util::sync::CancellationToken;

use crate::now_ms;
use crate::push::{deliver, Delivery};

/// Clients with a retry loop at once; more failures wait for the client's reconnect.
const MAX_LOOPS: usize = 100_000;
/// Attempts per loop before giving up to replay-on-reconnect.
const MAX_ATTEMPTS: u32 = 30;

#[derive(Clone)]
pub struct Retrier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    nodes: Arc<dyn NodeLink>,
    min: Duration,
    max: Duration,
    /// client -> highest failed seq.
    active: DashMap<String, u64>,
    shutdown: CancellationToken,
    attempts: Counter,
}

impl Retrier {
    pub fn new(
        store: Arc<dyn Store>,
        nodes: Arc<dyn NodeLink>,
        min_ms: u64,
        max_ms: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Retrier {
            inner: Arc::new(Inner {
                store,
                nodes,
                min: Duration::from_millis(min_ms),
                max: Duration::from_millis(max_ms),
                active: DashMap::new(),
                shutdown: CancellationToken::new(),
                attempts: metrics.counter("duplex_delivery_retries_total", &[]),
            }),
        }
    }

    /// Stops every loop (the messages stay stored).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Makes sure `seq` of `client_id` is retried.
    pub fn schedule(&self, client_id: &str, seq: u64) {
        // Checked before taking the entry: `len` locks every shard, the entry one of them.
        let at_limit = self.inner.active.len() >= MAX_LOOPS;
        let start = match self.inner.active.entry(client_id.to_owned()) {
            Entry::Occupied(mut e) => {
                let v = e.get_mut();
                *v = (*v).max(seq);
                false
            }
            Entry::Vacant(e) => {
                if at_limit {
                    tracing::warn!("retry loops at their limit; the client gets the message on reconnect");
                    return;
                }
                e.insert(seq);
                true
            }
        };
        if start {
            let inner = self.inner.clone();
            let client_id = client_id.to_owned();
            tokio::spawn(async move { inner.run(client_id).await });
        }
    }
}

impl Inner {
    fn backoff(&self, attempt: u32) -> Duration {
        duplex_shared::rate::full_jitter(self.min, self.max, attempt)
    }

    async fn run(&self, client_id: String) {
        for attempt in 0..MAX_ATTEMPTS {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(self.backoff(attempt)) => {}
            }
            let Some(seq) = self.active.get(&client_id).map(|v| *v) else {
                return;
            };
            self.attempts.inc();
            let next = match self.store.pending(&client_id, seq.saturating_sub(1), 1, now_ms()).await {
                Ok(p) => p.messages.into_iter().next(),
                Err(e) => {
                    tracing::warn!(error = %e, "retry could not read the store");
                    continue;
                }
            };
            let Some(m) = next else { break };
            let frame = m.frame();
            match deliver(&*self.store, &*self.nodes, &client_id, frame).await {
                Delivery::Failed => continue,
                // Offline: the client gets everything replayed when it connects.
                Delivery::NoRoute => break,
                Delivery::Delivered => {}
            }
            let _ = self.store.mark_sent(&client_id, m.seq, now_ms()).await;
            // Done unless a newer failure came in meanwhile.
            if self.active.remove_if(&client_id, |_, v| *v <= m.seq).is_some() {
                return;
            }
        }
        self.active.remove(&client_id);
    }
}
