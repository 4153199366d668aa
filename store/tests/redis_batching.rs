//! The Redis store packs concurrent queue calls into shared script calls:
//! fewer round trips under load, and one caller's failure stays its own.

use std::sync::Arc;

use duplex_store::MessageQueue;
use duplex_store::{Enqueued, NewMessage, QueueLimits, RedisStore, StoreError};
use duplex_testkit::{message, random_prefix, TestRedis};

const NOW: u64 = 1_800_000_000_000;
const LIMITS: QueueLimits = QueueLimits {
    max_messages: 1_000,
    max_bytes: 1_000_000,
};

fn msg() -> NewMessage {
    message(b"hello", NOW, NOW + 60_000)
}

async fn store_on(redis: &TestRedis) -> Arc<RedisStore> {
    let store = RedisStore::connect(&redis.url(), &random_prefix()).await;
    Arc::new(store.expect("connect"))
}

/// A plain connection, for what the test itself reads or sets up.
async fn direct(redis: &TestRedis) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).expect("client");
    client.get_multiplexed_async_connection().await.expect("connect")
}

/// EVALSHA calls the server has run, from `INFO commandstats`.
async fn script_calls(redis: &TestRedis) -> u64 {
    let mut conn = direct(redis).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn concurrent_enqueues_share_script_calls() {
    let redis = TestRedis::start().expect("redis-server");
    let store = store_on(&redis).await;
    let before = script_calls(&redis).await;
    let enqueues = (0..2_000).map(|i| {
        let store = store.clone();
        async move { store.enqueue(&format!("c{}", i % 500), &msg(), LIMITS, NOW).await }
    });
    for answer in futures_util::future::join_all(enqueues).await {
        assert!(matches!(answer, Ok(Enqueued::Stored { .. })), "{answer:?}");
    }
    let calls = script_calls(&redis).await - before;
    assert!(
        calls <= 2_000 / 8,
        "2,000 concurrent enqueues took {calls} script calls; batches of up to 64 expected"
    );
}

#[tokio::test]
async fn acks_arriving_one_after_another_wait_briefly_to_share_a_call() {
    let redis = TestRedis::start().expect("redis-server");
    let store = store_on(&redis).await;
    for i in 0..5 {
        store
            .enqueue(&format!("a{i}"), &msg(), LIMITS, NOW)
            .await
            .expect("enqueue");
    }
    let before = script_calls(&redis).await;
    let mut acks = Vec::new();
    for i in 0..5 {
        let store = store.clone();
        acks.push(tokio::spawn(async move { store.ack(&format!("a{i}"), 1, NOW).await }));
        // Enough for the batching task to take this ack and, were it not
        // for the linger, send it alone before the next one arrives.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }
    for ack in acks {
        assert_eq!(ack.await.expect("task").expect("ack"), 1);
    }
    let calls = script_calls(&redis).await - before;
    assert!(calls <= 2, "5 acks a few microseconds apart took {calls} script calls");
}

#[tokio::test]
async fn a_failing_caller_does_not_fail_the_callers_batched_with_it() {
    let redis = TestRedis::start().expect("redis-server");
    let store = store_on(&redis).await;
    // A queue key of the wrong type makes that client's enqueue fail inside the script.
    let mut conn = direct(&redis).await;
    let counters = format!("{}h", store.keys().client("broken"));
    let _: () = redis::cmd("SET")
        .arg(&counters)
        .arg("not a hash")
        .query_async(&mut conn)
        .await
        .expect("set");

    let before = script_calls(&redis).await;
    let enqueues = (0..200).map(|i| {
        let store = store.clone();
        let target = if i % 50 == 7 {
            "broken".to_owned()
        } else {
            format!("ok{i}")
        };
        async move { (target.clone(), store.enqueue(&target, &msg(), LIMITS, NOW).await) }
    });
    let answers = futures_util::future::join_all(enqueues).await;
    assert!(
        script_calls(&redis).await - before < 200,
        "the callers were not batched at all, so this test proves nothing"
    );
    for (target, answer) in answers {
        if target == "broken" {
            match answer {
                Err(StoreError::Unavailable(e)) => assert!(e.contains("WRONGTYPE"), "{e}"),
                other => panic!("the broken client's enqueue should fail, got {other:?}"),
            }
        } else {
            assert!(
                matches!(answer, Ok(Enqueued::Stored { seq: 1, .. })),
                "{target}: {answer:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_replicas_refusal_fails_the_whole_call_so_the_connection_layer_sees_it() {
    let master = TestRedis::start().expect("redis-server");
    let replica = TestRedis::start().expect("redis-server");
    let mut conn = direct(&replica).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(master.port())
        .query_async(&mut conn)
        .await
        .expect("replicaof");
    let store = store_on(&replica).await;
    let enqueues = (0..20).map(|i| {
        let store = store.clone();
        async move { store.enqueue(&format!("r{i}"), &msg(), LIMITS, NOW).await }
    });
    for answer in futures_util::future::join_all(enqueues).await {
        match answer {
            // Not "script failed: ...": that would be one caller's answer inside a
            // successful call, which Sentinel's connection could not react to.
            Err(StoreError::Unavailable(e)) => {
                assert!(
                    e.to_lowercase().contains("readonly") && !e.starts_with("script failed"),
                    "{e}"
                )
            }
            other => panic!("a replica must refuse the enqueue, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn scripts_lost_by_redis_are_loaded_again_and_the_call_goes_through() {
    let redis = TestRedis::start().expect("redis-server");
    let store = store_on(&redis).await;
    let first = store.enqueue("c", &msg(), LIMITS, NOW).await.expect("enqueue");
    assert!(matches!(first, Enqueued::Stored { seq: 1, .. }), "{first:?}");
    // As after a restart without persistence of scripts, or a failover.
    let mut conn = direct(&redis).await;
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    let second = store
        .enqueue("c", &msg(), LIMITS, NOW)
        .await
        .expect("enqueue after the flush");
    assert!(matches!(second, Enqueued::Stored { seq: 2, .. }), "{second:?}");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("flush");
    assert_eq!(store.ack("c", 2, NOW).await.expect("ack after the flush"), 2);
}
