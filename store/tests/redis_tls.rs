//! `rediss://`, `rediss+cluster://` and `rediss+sentinel://`: the Redis
//! store over TLS to a private TLS-only `redis-server`, a 3-master Cluster,
//! and a TLS-only Sentinel watching a TLS-only master, whose certificates
//! come from a CA the test makes.

use duplex_store::{Enqueued, MessageQueue, RedisStore, Routes};
use duplex_testkit::{message, random_prefix, TestCa, TestRedisCluster, TestRedisTls, TestRedisTlsSentinel};

const NOW: u64 = 1_800_000_000_000;

#[tokio::test]
async fn the_store_works_over_tls_trusting_the_servers_ca() {
    let server = TestRedisTls::start().expect("redis-server with TLS");
    let store = RedisStore::connect_trusting(&server.url(), &random_prefix(), Some(&server.ca_pem()))
        .await
        .expect("connect over TLS");
    let claim = store
        .claim_route("c1", "u1", "n1", std::time::Duration::from_secs(30))
        .await
        .expect("claim");
    let limits = duplex_store::QueueLimits {
        max_messages: 10,
        max_bytes: 10_000,
    };
    match store
        .enqueue("c1", &message(b"over tls", NOW, NOW + 60_000), limits, NOW)
        .await
    {
        Ok(Enqueued::Stored { seq: 1, route, .. }) => assert_eq!(route, Some(claim.route)),
        other => panic!("expected seq 1 stored, got {other:?}"),
    }
    let pending = store.pending("c1", 0, 10, NOW).await.expect("pending");
    assert_eq!(pending.messages.len(), 1);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let server = TestRedisTls::start().expect("redis-server with TLS");
    let stranger = TestCa::new("someone else's CA").pem();
    let refused = RedisStore::connect_trusting(&server.url(), &random_prefix(), Some(stranger.as_bytes())).await;
    assert!(refused.is_err(), "a certificate from an untrusted CA was accepted");
}

#[tokio::test]
async fn the_store_works_over_tls_on_a_cluster() {
    let cluster = TestRedisCluster::start_tls().expect("redis cluster with TLS");
    let ca = std::fs::read(&cluster.certs.as_ref().expect("certs").ca).expect("CA");
    let store = RedisStore::connect_trusting(&cluster.url(), &random_prefix(), Some(&ca))
        .await
        .expect("connect over TLS");
    let limits = duplex_store::QueueLimits {
        max_messages: 10,
        max_bytes: 10_000,
    };
    // Clients spread over the slots, so every master is reached over TLS.
    for i in 0..20 {
        let client = format!("c{i}");
        match store
            .enqueue(&client, &message(b"over tls", NOW, NOW + 60_000), limits, NOW)
            .await
        {
            Ok(Enqueued::Stored { seq: 1, .. }) => {}
            other => panic!("expected seq 1 stored for {client}, got {other:?}"),
        }
        assert_eq!(
            store
                .pending(&client, 0, 10, NOW)
                .await
                .expect("pending")
                .messages
                .len(),
            1
        );
    }
}

#[tokio::test]
async fn the_store_finds_and_uses_its_master_over_tls_through_a_tls_sentinel() {
    let set = TestRedisTlsSentinel::start().expect("redis-server and sentinel with TLS");
    let ca = set.master.ca_pem();
    let store = RedisStore::connect_trusting(&set.url(), &random_prefix(), Some(&ca))
        .await
        .expect("connect through the sentinel over TLS");
    let limits = duplex_store::QueueLimits {
        max_messages: 10,
        max_bytes: 10_000,
    };
    match store
        .enqueue("c1", &message(b"via sentinel", NOW, NOW + 60_000), limits, NOW)
        .await
    {
        Ok(Enqueued::Stored { seq: 1, .. }) => {}
        other => panic!("expected seq 1 stored, got {other:?}"),
    }
    assert_eq!(
        store.pending("c1", 0, 10, NOW).await.expect("pending").messages.len(),
        1
    );
    // The message is on the master the sentinel names (read there directly, over TLS).
    let direct = RedisStore::connect_trusting(&set.master.url(), store.keys().prefix(), Some(&ca))
        .await
        .expect("the master itself");
    assert_eq!(
        direct.pending("c1", 0, 10, NOW).await.expect("pending").messages.len(),
        1
    );
    // Trusting another CA, neither the sentinel nor the master is accepted.
    let stranger = TestCa::new("someone else's CA").pem();
    let refused = RedisStore::connect_trusting(&set.url(), &random_prefix(), Some(stranger.as_bytes())).await;
    assert!(
        refused.is_err(),
        "a sentinel certificate from an untrusted CA was accepted"
    );
}
