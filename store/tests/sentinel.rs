//! Behind Sentinel, a failover is something the store rides out on its own:
//! the same `RedisStore` finds the promoted master and keeps every message
//! the replica had, with its seq.

use std::time::Duration;

use duplex_store::MessageQueue;
use duplex_store::{Enqueued, NewMessage, QueueLimits, RedisStore, StoreError};
use duplex_testkit::{message, random_prefix, TestRedisSentinel};

const NOW: u64 = 1_800_000_000_000;
const LIMITS: QueueLimits = QueueLimits {
    max_messages: 1_000,
    max_bytes: 1_000_000,
};

fn msg(payload: String) -> NewMessage {
    message(payload.as_bytes(), NOW, NOW + 600_000)
}

/// Retries `op` while the store says Redis is unavailable (what a caller
/// sees during the failover: a retryable error), for at most 20 s.
async fn until_available<T, F, Fut>(mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut last = None;
    for _ in 0..200 {
        match op().await {
            Ok(v) => return v,
            Err(e @ StoreError::Unavailable(_)) => last = Some(e),
            Err(other) => panic!("not a retryable error: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("still unavailable after 20 s: {last:?}");
}

#[tokio::test]
async fn a_failover_keeps_stored_messages_and_seqs_without_reconnecting() {
    let set = TestRedisSentinel::start().expect("redis sentinel");
    let store = RedisStore::connect(&set.url(), &random_prefix())
        .await
        .expect("connect");
    for i in 1..=50u64 {
        match store
            .enqueue("f1", &msg(format!("m{i}")), LIMITS, NOW)
            .await
            .expect("enqueue")
        {
            Enqueued::Stored { seq, .. } => assert_eq!(seq, i),
            other => panic!("expected Stored, got {other:?}"),
        }
    }
    store.ack("f1", 10, NOW).await.expect("ack");
    let old_master = set.sentinel_says_master().expect("a master");

    let new_master = set.failover().expect("failover");
    assert_ne!(new_master, old_master);

    // The first command may still go to the demoted master (READONLY) or
    // find the connection gone; the store re-resolves by itself.
    let pending = until_available(|| store.pending("f1", 0, 100, NOW)).await;
    assert_eq!(pending.acked, 10);
    let seqs: Vec<u64> = pending.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (11..=50).collect::<Vec<_>>());
    assert_eq!(pending.messages[0].record.payload.as_ref(), b"m11");

    let after = msg("after".into());
    let next = until_available(|| store.enqueue("f1", &after, LIMITS, NOW)).await;
    assert!(
        matches!(next, Enqueued::Stored { seq: 51, .. }),
        "the seq counter moved over with the data: {next:?}"
    );
    assert_eq!(set.sentinel_says_master(), Some(new_master));
}

#[tokio::test]
async fn a_killed_master_is_replaced_and_its_replicated_messages_stay() {
    let mut set = TestRedisSentinel::start().expect("redis sentinel");
    let store = RedisStore::connect(&set.url(), &random_prefix())
        .await
        .expect("connect");
    for i in 1..=20u64 {
        store
            .enqueue("k1", &msg(format!("m{i}")), LIMITS, NOW)
            .await
            .expect("enqueue");
    }
    let old_master = set.sentinel_says_master().expect("a master");

    let new_master = set.kill_master().expect("promotion after SIGKILL");
    assert_ne!(new_master, old_master);

    // Commands fail (retryably) while the connection to the dead master is
    // given up; then the store is on the promoted replica.
    let pending = until_available(|| store.pending("k1", 0, 100, NOW)).await;
    assert_eq!(
        pending.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    let after = msg("after".into());
    let next = until_available(|| store.enqueue("k1", &after, LIMITS, NOW)).await;
    assert!(matches!(next, Enqueued::Stored { seq: 21, .. }), "{next:?}");
}
