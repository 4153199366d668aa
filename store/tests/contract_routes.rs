//! The routes contract: every test runs against `MemoryStore` and against a
//! `RedisStore` on a private `redis-server`, Sentinel and Cluster.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{msg, LIMITS, NOW, TTL};
use duplex_store::{ClaimError, Renewal, Route, Store};

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

async fn a_client_id_belongs_to_the_user_who_first_claimed_it(store: Arc<dyn Store>) {
    assert_eq!(store.client_owner("bob-phone").await.expect("owner"), None);
    let bob = store
        .claim_route("bob-phone", "bob", "node-a", TTL)
        .await
        .expect("claim");
    store
        .enqueue("bob-phone", &msg("for bob", 60_000, None), LIMITS, NOW)
        .await
        .expect("enqueue");
    assert_eq!(
        store.client_owner("bob-phone").await.expect("owner").as_deref(),
        Some("bob")
    );

    let refused = store.claim_route("bob-phone", "alice", "node-b", TTL).await;
    assert!(matches!(refused, Err(ClaimError::Taken)), "{refused:?}");
    assert!(!ClaimError::Taken.retryable());
    // The refusal changed nothing: same route, same epoch, queue intact.
    assert_eq!(
        store.get_route("bob-phone").await.expect("get"),
        Some(bob.route.clone())
    );
    let pending = store.pending("bob-phone", 0, 10, NOW).await.expect("pending");
    assert_eq!((pending.acked, pending.messages.len()), (0, 1));
    assert!(!store
        .user_clients("alice")
        .await
        .expect("alice's clients")
        .contains(&"bob-phone".to_string()));

    // Bob's disconnect does not free the id while his client has state.
    assert!(store.release_route("bob-phone", &bob.route).await.expect("release"));
    let refused = store.claim_route("bob-phone", "alice", "node-b", TTL).await;
    assert!(matches!(refused, Err(ClaimError::Taken)), "{refused:?}");
    assert_eq!(store.get_route("bob-phone").await.expect("get"), None);
    let again = store
        .claim_route("bob-phone", "bob", "node-b", TTL)
        .await
        .expect("bob again");
    assert!(
        again.route.conn_epoch > bob.route.conn_epoch,
        "no epoch was spent on alice"
    );
    assert_eq!(again.route.conn_epoch, bob.route.conn_epoch + 1);
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
    for i in 1..=3 {
        store
            .enqueue("r1", &msg(&format!("m{i}"), 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue");
    }
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
    let outcomes: Vec<Renewal> = got.iter().map(|c| c.renewal).collect();
    assert_eq!(outcomes, vec![Renewal::Renewed, Renewal::Replaced, Renewal::Restored]);
    let last_seqs: Vec<u64> = got.iter().map(|c| c.last_seq).collect();
    assert_eq!(last_seqs, vec![3, 0, 0], "each client's highest stored seq comes along");
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

duplex_testkit::store_contract!(
    routes_are_leases_owned_by_one_connection,
    a_client_id_belongs_to_the_user_who_first_claimed_it,
    refresh_renews_restores_and_reports_replaced,
    leases_expire,
    users_list_their_clients,
    concurrent_claims_get_distinct_ordered_epochs,
);
