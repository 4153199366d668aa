//! One contract, two stores: every test runs against `MemoryStore` and
//! against a `RedisStore` on a private `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use duplex_shared::store::{MemoryStore, RedisStore, Renewal, Route, Store};
use duplex_shared::testing::{random_prefix, TestRedis};

const TTL: Duration = Duration::from_secs(30);

async fn routes_are_leases_owned_by_one_connection(store: Arc<dyn Store>) {
    assert_eq!(store.get_route("c1").await.expect("get"), None);
    let first = store.claim_route("c1", "u1", "node-a", TTL).await.expect("claim");
    assert_eq!(first.previous, None);
    assert_eq!(first.route.node_id, "node-a");
    assert_eq!(store.get_route("c1").await.expect("get"), Some(first.route.clone()));

    let second = store.claim_route("c1", "u1", "node-b", TTL).await.expect("claim");
    assert!(
        second.route.conn_epoch > first.route.conn_epoch,
        "newer connection gets a larger epoch"
    );
    assert_eq!(second.previous, Some(first.route.clone()));

    // The replaced connection's late disconnect must not remove the new route.
    assert!(!store.release_route("c1", &first.route).await.expect("release"));
    assert_eq!(store.get_route("c1").await.expect("get"), Some(second.route.clone()));
    assert!(store.release_route("c1", &second.route).await.expect("release"));
    assert_eq!(store.get_route("c1").await.expect("get"), None);
}

async fn refresh_renews_restores_and_reports_replaced(store: Arc<dyn Store>) {
    let a = store.claim_route("r1", "u", "n", TTL).await.expect("claim").route;
    let b = store.claim_route("r2", "u", "n", TTL).await.expect("claim").route;
    let stale = Route {
        node_id: "n".into(),
        conn_epoch: b.conn_epoch,
    };
    store
        .claim_route("r2", "u", "m", TTL)
        .await
        .expect("claim r2 elsewhere");
    let gone = Route {
        node_id: "n".into(),
        conn_epoch: 99,
    };
    let got = store
        .refresh_routes(
            &[
                ("r1".into(), a.clone()),
                ("r2".into(), stale),
                ("r3".into(), gone.clone()),
            ],
            TTL,
        )
        .await
        .expect("refresh");
    assert_eq!(got, vec![Renewal::Renewed, Renewal::Replaced, Renewal::Restored]);
    assert_eq!(store.get_route("r3").await.expect("get"), Some(gone));
}

async fn leases_expire(store: Arc<dyn Store>) {
    store
        .claim_route("e1", "u", "n", Duration::from_millis(50))
        .await
        .expect("claim");
    let mut gone = false;
    for _ in 0..100 {
        if store.get_route("e1").await.expect("get").is_none() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(gone, "a lease that is not renewed expires");
    let again = store.claim_route("e1", "u", "n", TTL).await.expect("claim");
    assert_eq!(again.previous, None, "an expired lease is not reported as replaced");
}

async fn users_list_their_clients(store: Arc<dyn Store>) {
    store.claim_route("p1", "alice", "n", TTL).await.expect("claim");
    store.claim_route("p2", "alice", "n", TTL).await.expect("claim");
    store.claim_route("p3", "bob", "n", TTL).await.expect("claim");
    let mut alice = store.user_clients("alice").await.expect("clients");
    alice.sort();
    assert_eq!(alice, vec!["p1".to_owned(), "p2".to_owned()]);
    assert!(store.user_clients("nobody").await.expect("clients").is_empty());
    store.ping().await.expect("ping");
}

async fn concurrent_claims_get_distinct_ordered_epochs(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim_route("busy", "u", &format!("n{i}"), TTL)
                .await
                .expect("claim")
        }));
    }
    let mut claims = Vec::new();
    for t in tasks {
        claims.push(t.await.expect("join"));
    }
    let mut epochs: Vec<u64> = claims.iter().map(|c| c.route.conn_epoch).collect();
    epochs.sort();
    epochs.dedup();
    assert_eq!(epochs.len(), 16);
    // Exactly one claim replaced nothing; every other replaced a distinct route.
    assert_eq!(claims.iter().filter(|c| c.previous.is_none()).count(), 1);
    let newest = claims.iter().max_by_key(|c| c.route.conn_epoch).expect("some");
    assert_eq!(store.get_route("busy").await.expect("get"), Some(newest.route.clone()));
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(std::sync::Arc::new(super::MemoryStore::new())).await;
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test]
                async fn $name() {
                    let server = super::TestRedis::start().expect("redis-server");
                    let store = super::RedisStore::connect(&server.url(), &super::random_prefix())
                        .await
                        .expect("connect");
                    super::$name(std::sync::Arc::new(store)).await;
                }
            )*
        }
    };
}

contract!(
    routes_are_leases_owned_by_one_connection,
    refresh_renews_restores_and_reports_replaced,
    leases_expire,
    users_list_their_clients,
    concurrent_claims_get_distinct_ordered_epochs,
);
