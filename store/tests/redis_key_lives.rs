//! The Redis queue layout leaves nothing behind: every key it writes has an
//! expiry, no later than needed by more than the granted slack, and a message's
//! status outlives the message by the promised retention.

use duplex_store::{MessageQueue, Routes};
use duplex_store::{NewMessage, QueueLimits, RedisStore, STATUS_RETENTION_MS};
use duplex_testkit::{message, random_prefix, TestRedis};

/// Ahead of the wall clock, so absolute expiries written by the store are in the future.
const NOW: u64 = 1_900_000_000_000;
const TTL_MS: u64 = 60_000;
/// What the store may grant beyond a needed life (fewer expiry updates).
const SLACK_MS: u64 = 3_600_000;
const LIMITS: QueueLimits = QueueLimits {
    max_messages: 1_000,
    max_bytes: 1_000_000,
};

fn msg(expires_ms: u64) -> NewMessage {
    message(b"hello", NOW, expires_ms)
}

/// Every key under `prefix` with its absolute expiry in ms (-1: none).
async fn keys_and_expiries(redis: &TestRedis, prefix: &str) -> Vec<(String, i64)> {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let at: i64 = redis::cmd("PEXPIRETIME")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("pexpiretime");
        out.push((key, at));
    }
    out.sort();
    out
}

#[tokio::test]
async fn every_queue_key_expires_and_statuses_outlive_their_messages_by_the_retention() {
    let redis = TestRedis::start().expect("redis-server");
    let prefix = random_prefix();
    let store = RedisStore::connect(&redis.url(), &prefix).await.expect("connect");
    let expires = NOW + TTL_MS;

    // A client with a full life cycle: stored, sent, acked, one left pending,
    // past two status buckets; the queue empties and fills again.
    for _ in 0..40 {
        store
            .enqueue("busy", &msg(expires), LIMITS, NOW)
            .await
            .expect("enqueue");
    }
    store.mark_sent("busy", 1, NOW + 1).await.expect("sent");
    assert_eq!(store.ack("busy", 40, NOW + 2).await.expect("ack"), 40);
    store
        .enqueue("busy", &msg(expires), LIMITS, NOW + 3)
        .await
        .expect("enqueue");
    // One whose message expires, seen by a later call.
    store
        .enqueue("short", &msg(NOW + 1_000), LIMITS, NOW)
        .await
        .expect("enqueue");
    assert_eq!(store.queue_info("short", NOW + 2_000).await.expect("info").expired, 1);
    // Clients that only connected (replay read, resume ack) and never got a message.
    assert!(store
        .pending("idle", 0, 100, NOW)
        .await
        .expect("pending")
        .messages
        .is_empty());
    store.queue_info("idle", NOW).await.expect("info");
    assert_eq!(store.resume("resumed", 7, NOW).await.expect("resume"), 0);
    // A sent mark arriving after the message's statuses are gone.
    store.mark_sent("ghost", 5, NOW).await.expect("sent");

    let keys = keys_and_expiries(&redis, &prefix).await;
    assert!(!keys.is_empty());
    let status_life = (expires + STATUS_RETENTION_MS) as i64;
    for (key, at) in &keys {
        assert!(*at > 0, "{key} has no expiry: {keys:?}");
        assert!(!key.contains("{c:idle}"), "a read left {key} behind");
        if key.contains("{c:busy}") {
            assert!(
                *at >= status_life && *at <= status_life + SLACK_MS as i64,
                "{key} lives until {at}, the statuses need {status_life}: {keys:?}"
            );
        }
    }
    // The statuses of the 41 busy messages (seqs 1..=41) are in five buckets
    // named by the seq's digits without the last (1..=9, 10..=19, ...,
    // 40..=49); each message has no key of its own.
    let mut busy: Vec<_> = keys
        .iter()
        .filter(|(k, _)| k.contains("{c:busy}"))
        .map(|(k, _)| k.rsplit(':').next().unwrap_or_default())
        .collect();
    busy.sort();
    assert_eq!(
        busy,
        ["", "1", "2", "3", "4", "h"],
        "h and five status buckets: {keys:?}"
    );
    let resumed = keys
        .iter()
        .find(|(k, _)| k.contains("{c:resumed}"))
        .expect("resume watermark");
    assert!(
        resumed.1 > 0 && resumed.1 <= (NOW + STATUS_RETENTION_MS) as i64,
        "{resumed:?}"
    );
}

#[tokio::test]
async fn a_renewed_connection_keeps_its_owner_past_the_owners_first_life() {
    use duplex_store::{ClaimError, USER_CLIENTS_TTL};
    let redis = TestRedis::start().expect("redis-server");
    let prefix = random_prefix();
    let store = RedisStore::connect(&redis.url(), &prefix).await.expect("connect");
    let lease = std::time::Duration::from_secs(30);
    let claim = store.claim_route("ann-phone", "ann", "n1", lease).await.expect("claim");
    let client = redis::Client::open(redis.url()).expect("client");
    let mut conn = client.get_multiplexed_async_connection().await.expect("connect");
    let owner_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*owner"))
        .query_async(&mut conn)
        .await
        .expect("keys");
    assert_eq!(owner_keys.len(), 1, "{owner_keys:?}");
    // The connection has lasted almost USER_CLIENTS_TTL: the owner has a second left.
    let _: () = redis::cmd("PEXPIRE")
        .arg(&owner_keys[0])
        .arg(1_000)
        .query_async(&mut conn)
        .await
        .expect("pexpire");
    store
        .refresh_routes(&[("ann-phone".to_owned(), claim.route)], lease)
        .await
        .expect("renew");
    let left: i64 = redis::cmd("PTTL")
        .arg(&owner_keys[0])
        .query_async(&mut conn)
        .await
        .expect("pttl");
    assert!(
        left > USER_CLIENTS_TTL.as_millis() as i64 - 60_000,
        "the renewal gave the owner a new life: {left} ms"
    );
    assert!(matches!(
        store.claim_route("ann-phone", "mallory", "n1", lease).await,
        Err(ClaimError::Taken)
    ));
}
