//! Keeps one connection's stored messages in seq order, without duplicates
//! and without silent holes.
//!
//! `cursor` is the highest seq the client has been sent (or said it has, with
//! `last_seq`). Deliveries may arrive out of order (concurrent pushes, retries)
//! or be lost (a node was unreachable): a delivery right after the cursor is
//! written at once, one at or below it is a duplicate and dropped, and one
//! beyond it first pulls the missing seqs from the store. Seqs that are
//! neither pending nor acknowledged expired: the client gets a `gap` frame.

use std::sync::Arc;

use bytes::Bytes;
use duplex_shared::metrics::{FrameCounts, Metrics};
use duplex_shared::protocol::{Frame, Gap};
use duplex_store::{Store, StoreError};

use crate::outbox::Outgoing;
use crate::send::body;

/// Pending messages fetched from the store per round trip.
pub(crate) const FETCH_BATCH: usize = 256;

#[derive(Debug)]
pub(crate) struct Sequencer {
    pub cursor: u64,
    /// The connect's `last_seq`: the client processed everything up to it,
    /// so missing seqs there are no gap to report (the replay may start
    /// below it, from what the store knows was written).
    no_gap_through: u64,
    /// Gaps sent since the session last took them (for lifecycle events);
    /// boxed: most connections never see one, and this is kept per connection.
    #[expect(
        clippy::box_collection,
        reason = "8 bytes per connection instead of 24; gaps are rare"
    )]
    gaps: Option<Box<Vec<(u64, u64)>>>,
}

pub(crate) use duplex_store::now_ms;

/// What sequencers count into: one per node, passed in (not kept per connection).
#[derive(Debug)]
pub(crate) struct Counts {
    pub metrics: Arc<Metrics>,
    pub frames_out: FrameCounts,
}

impl Sequencer {
    pub fn new(last_seq: u64) -> Self {
        Sequencer {
            cursor: last_seq,
            no_gap_through: last_seq,
            gaps: None,
        }
    }

    /// The gaps (`from..=to`) sent since the last call.
    pub fn take_gaps(&mut self) -> Vec<(u64, u64)> {
        self.gaps.take().map(|g| *g).unwrap_or_default()
    }

    fn gap_to(&mut self, counts: &Counts, seq: u64, out: &mut Vec<Bytes>) {
        let from = self.cursor.max(self.no_gap_through) + 1;
        if seq > from {
            counts.metrics.inc("duplex_gaps_total", &[]);
            counts
                .metrics
                .counter("duplex_gap_messages_total", &[])
                .add((seq - from) as i64);
            counts.frames_out.count("gap");
            self.gaps.get_or_insert_default().push((from, seq - 1));
            out.push(body(&Frame::Gap(Gap {
                from,
                to: seq - 1,
                reason: "expired".into(),
            })));
        }
    }

    /// Appends pending messages after the cursor (below `until`, if given) to
    /// `out`; returns whether more may be pending. `reason` labels the read
    /// in `duplex_sequencer_fetches_total`: `replay` (on connect), `catch_up`
    /// (told to at lease renewal) or `hole` (a delivery came before the ones
    /// under it).
    pub async fn catch_up(
        &mut self,
        (store, counts): (&dyn Store, &Counts),
        client_id: &str,
        until: Option<u64>,
        reason: &'static str,
        out: &mut Vec<Bytes>,
    ) -> Result<bool, StoreError> {
        counts
            .metrics
            .inc("duplex_sequencer_fetches_total", &[("reason", reason)]);
        let pending = store.pending(client_id, self.cursor, FETCH_BATCH, now_ms()).await?;
        // Seqs at or below the ack watermark were processed; they are no gap.
        self.cursor = self.cursor.max(pending.acked);
        let full = pending.messages.len() == FETCH_BATCH;
        for m in &pending.messages {
            if until.is_some_and(|u| m.seq >= u) {
                return Ok(false);
            }
            if m.seq <= self.cursor {
                continue;
            }
            self.gap_to(counts, m.seq, out);
            let frame = m.frame();
            counts.frames_out.frame(&frame);
            out.push(body(&frame));
            self.cursor = m.seq;
        }
        Ok(full)
    }

    /// Orders a batch of queued deliveries into bodies to write.
    pub async fn prepare(
        &mut self,
        (store, counts): (&dyn Store, &Counts),
        client_id: &str,
        mut items: Vec<Outgoing>,
        out: &mut Vec<Bytes>,
    ) -> Result<(), StoreError> {
        // Concurrent pushes to one client can reach its outbox out of order;
        // in seq order, those queued together need no store read. (Frames
        // outside the stored sequence, seq 0, go first; nothing orders them
        // against stored ones.)
        items.sort_by_key(Outgoing::seq);
        for item in items {
            let (seq, body) = match item {
                Outgoing::CatchUp { seq } => {
                    // Bounded: every round either advances the cursor by a full batch or ends.
                    for _ in 0..1_000 {
                        if self.cursor >= seq
                            || !self
                                .catch_up((store, counts), client_id, Some(seq + 1), "catch_up", out)
                                .await?
                        {
                            break;
                        }
                    }
                    continue;
                }
                Outgoing::Frame { seq: 0, body } => {
                    out.push(body);
                    continue;
                }
                Outgoing::Frame { seq, body } => (seq, body),
            };
            if seq <= self.cursor {
                continue;
            }
            // Bounded: every round either advances the cursor by a full batch or ends.
            for _ in 0..1_000 {
                if seq == self.cursor + 1
                    || !self
                        .catch_up((store, counts), client_id, Some(seq), "hole", out)
                        .await?
                {
                    break;
                }
            }
            if seq <= self.cursor {
                continue;
            }
            self.gap_to(counts, seq, out);
            out.push(body);
            self.cursor = seq;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use duplex_store::{MemoryStore, QueueLimits, StoredMessage};
    use duplex_testkit::message;

    use super::*;

    /// Stores messages 1..=n for client `c`; returns their delivery items.
    async fn stored(store: &dyn Store, n: u64) -> Vec<Outgoing> {
        let now = now_ms();
        let limits = QueueLimits {
            max_messages: 100,
            max_bytes: 100_000,
        };
        let mut items = Vec::new();
        for seq in 1..=n {
            let msg = message(b"x", now, now + 60_000);
            store.enqueue("c", &msg, limits, now).await.expect("enqueue");
            let m = StoredMessage {
                seq,
                msg_id: format!("c~{seq}~{}", msg.record.nonce),
                record: msg.record,
            };
            items.push(Outgoing::Frame {
                seq,
                body: body(&m.frame()),
            });
        }
        items
    }

    fn hole_reads(metrics: &Metrics) -> i64 {
        metrics
            .counter("duplex_sequencer_fetches_total", &[("reason", "hole")])
            .get()
    }

    #[tokio::test]
    async fn deliveries_queued_out_of_order_are_written_in_order_without_a_store_read() {
        let store = MemoryStore::new();
        let mut items = stored(&store, 3).await;
        items.reverse();
        let metrics = Arc::new(Metrics::new());
        let counts = Counts {
            metrics: metrics.clone(),
            frames_out: FrameCounts::new(&metrics, "duplex_frames_out_total"),
        };
        let mut sequencer = Sequencer::new(0);
        let mut out = Vec::new();
        sequencer
            .prepare((&store, &counts), "c", items, &mut out)
            .await
            .expect("prepare");
        assert_eq!(out.len(), 3, "three pushes, no gap");
        assert_eq!(sequencer.cursor, 3);
        assert_eq!(hole_reads(&metrics), 0);
    }

    #[tokio::test]
    async fn a_delivery_that_overtook_one_not_yet_queued_reads_the_missing_one_from_the_store() {
        let store = MemoryStore::new();
        let items = stored(&store, 2).await;
        let metrics = Arc::new(Metrics::new());
        let counts = Counts {
            metrics: metrics.clone(),
            frames_out: FrameCounts::new(&metrics, "duplex_frames_out_total"),
        };
        let mut sequencer = Sequencer::new(0);
        let mut out = Vec::new();
        let second = items.into_iter().nth(1).expect("seq 2");
        sequencer
            .prepare((&store, &counts), "c", vec![second], &mut out)
            .await
            .expect("prepare");
        assert_eq!(out.len(), 2, "seq 1 from the store, then seq 2");
        assert_eq!(sequencer.cursor, 2);
        assert_eq!(hole_reads(&metrics), 1);
    }
}
