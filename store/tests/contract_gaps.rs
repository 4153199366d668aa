//! Store contract, continued (every backend, as `store_contract.rs`): queues
//! whose pending seqs are far apart. The Redis layout finds a client's
//! pending messages by seq range, so expiry holes much wider than the queue
//! and acks beyond the last seq given out must not hide or lose any.

use std::sync::Arc;

use duplex_store::{Enqueued, MessageState, QueueLimits, Store};
use duplex_testkit::message;

const NOW: u64 = 1_800_000_000_000;
const LIMITS: QueueLimits = QueueLimits {
    max_messages: 1_000,
    max_bytes: 1_000_000,
};

async fn enqueue(store: &Arc<dyn Store>, client: &str, payload: &str, ttl_ms: u64, now: u64) -> u64 {
    match store
        .enqueue(client, &message(payload.as_bytes(), NOW, NOW + ttl_ms), LIMITS, now)
        .await
        .expect("enqueue")
    {
        Enqueued::Stored { seq, .. } => seq,
        other => panic!("expected Stored, got {other:?}"),
    }
}

async fn seqs(store: &Arc<dyn Store>, client: &str, after: u64, now: u64) -> Vec<u64> {
    let pending = store.pending(client, after, 100, now).await.expect("pending");
    pending.messages.iter().map(|m| m.seq).collect()
}

async fn holes_wider_than_the_queue_hide_no_pending_message(store: Arc<dyn Store>) {
    let c = "gaps";
    assert_eq!(enqueue(&store, c, "keep-1", 600_000, NOW).await, 1);
    for _ in 0..150 {
        enqueue(&store, c, "short", 1_000, NOW).await;
    }
    assert_eq!(enqueue(&store, c, "keep-2", 600_000, NOW).await, 152);
    let later = NOW + 2_000;
    assert_eq!(seqs(&store, c, 0, later).await, vec![1, 152]);
    assert_eq!(seqs(&store, c, 1, later).await, vec![152]);
    let info = store.queue_info(c, later).await.expect("info");
    assert_eq!((info.pending, info.expired), (2, 150));
    let status = store.message_status(c, 70, 0, later).await.expect("status");
    assert!(status.is_none(), "a wrong nonce finds nothing: {status:?}");
    // One ack across the hole removes both messages around it.
    assert_eq!(store.ack(c, 152, later).await.expect("ack"), 2);
    let info = store.queue_info(c, later).await.expect("info");
    assert_eq!((info.pending, info.pending_bytes, info.last_acked_seq), (0, 0, 152));
    assert!(seqs(&store, c, 0, later).await.is_empty());
}

async fn an_ack_beyond_the_last_seq_leaves_later_messages_pending(store: Arc<dyn Store>) {
    let c = "ahead";
    assert_eq!(enqueue(&store, c, "one", 60_000, NOW).await, 1);
    // A client acking a seq it was never given (no resume): what was given
    // out is acked; what comes later is still delivered and ackable.
    assert_eq!(store.ack(c, 10, NOW).await.expect("ack"), 1);
    assert_eq!(enqueue(&store, c, "two", 60_000, NOW).await, 2);
    assert_eq!(seqs(&store, c, 0, NOW).await, vec![2]);
    let pending = store.pending(c, 0, 100, NOW).await.expect("pending");
    let id = &pending.messages[0].msg_id;
    let nonce = duplex_store::parse_message_id(id).expect("our id").2;
    assert_eq!(store.ack(c, 2, NOW).await.expect("ack"), 1);
    let status = store
        .message_status(c, 2, nonce, NOW)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(status.state, MessageState::Acked);
    let info = store.queue_info(c, NOW).await.expect("info");
    assert_eq!((info.pending, info.last_acked_seq), (0, 10));
}

/// A message stored between a connect's route claim and its resume (a push
/// racing the connect) gets a seq above the connect's `last_seq`: the claim
/// raised the counter, so the client never drops it as already processed.
async fn a_claim_raises_the_seq_counter_before_the_route_is_visible(store: Arc<dyn Store>) {
    let ttl = std::time::Duration::from_secs(30);
    store
        .claim_route_after("fresh", "u", "node-a", ttl, 50)
        .await
        .expect("claim");
    assert_eq!(enqueue(&store, "fresh", "racing", 60_000, NOW).await, 51);
    // A client with stored messages: the counter only ever goes up.
    assert_eq!(enqueue(&store, "busy", "one", 60_000, NOW).await, 1);
    assert_eq!(enqueue(&store, "busy", "two", 60_000, NOW).await, 2);
    store
        .claim_route_after("busy", "u", "node-a", ttl, 1)
        .await
        .expect("claim");
    assert_eq!(enqueue(&store, "busy", "three", 60_000, NOW).await, 3);
    store
        .claim_route_after("busy", "u", "node-a", ttl, 10)
        .await
        .expect("claim");
    assert_eq!(enqueue(&store, "busy", "four", 60_000, NOW).await, 11);
    let pending = store.pending("busy", 0, 10, NOW).await.expect("pending");
    let seqs: Vec<u64> = pending.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 11], "nothing stored was touched");
    // Another user's claim changes nothing, the counter included.
    assert!(store
        .claim_route_after("busy", "mallory", "node-b", ttl, 1_000)
        .await
        .is_err());
    assert_eq!(enqueue(&store, "busy", "five", 60_000, NOW).await, 12);
}

duplex_testkit::store_contract!(
    a_claim_raises_the_seq_counter_before_the_route_is_visible,
    holes_wider_than_the_queue_hide_no_pending_message,
    an_ack_beyond_the_last_seq_leaves_later_messages_pending,
);
