//! The in-memory store forgets a client once it has no route, no stored
//! state and no owner to keep, as Redis keys expire: memory does not grow
//! with every client id ever seen.

use std::time::Duration;

use duplex_store::{
    now_ms, ClaimError, MemoryHeld, MemoryStore, QueueLimits, Renewal, STATUS_RETENTION_MS, USER_CLIENTS_TTL,
};
use duplex_store::{MessageQueue, Routes};
use duplex_testkit::message;

const LIMITS: QueueLimits = QueueLimits {
    max_messages: 100,
    max_bytes: 1 << 20,
};
const LEASE: Duration = Duration::from_secs(30);

#[tokio::test(start_paused = true)]
async fn clients_with_nothing_left_are_forgotten_and_the_rest_kept() {
    let store = MemoryStore::new();
    let now = now_ms();
    // Expired so long ago that even its status is past retention.
    let long_ago = now - STATUS_RETENTION_MS - 3_600_000;

    // ann connected once and had a message that expired long ago.
    let ann = store.claim_route("ann-old", "ann", "n1", LEASE).await.expect("claim");
    store.release_route("ann-old", &ann.route).await.expect("release");
    store
        .enqueue("ann-old", &message(b"old", long_ago - 1_000, long_ago), LIMITS, now)
        .await
        .expect("enqueue");
    // A backend pushed to an id that never connected; it expired long ago too.
    store
        .enqueue("pushed-only", &message(b"x", long_ago - 1_000, long_ago), LIMITS, now)
        .await
        .expect("enqueue");
    // bob is offline with a message still pending for an hour.
    let bob = store.claim_route("bob-phone", "bob", "n1", LEASE).await.expect("claim");
    store.release_route("bob-phone", &bob.route).await.expect("release");
    store
        .enqueue("bob-phone", &message(b"keep", now, now + 3_600_000), LIMITS, now)
        .await
        .expect("enqueue");
    // cy stays connected the whole time; its node renews the lease.
    let cy = store.claim_route("cy-tab", "cy", "n1", LEASE).await.expect("claim");
    assert_eq!(store.held().clients, 3);
    assert_eq!(store.held().queues, 3);

    // Past the owners' life, in steps shorter than the lease (in steps of a
    // day the renewals would keep finding the lease lapsed and restore it).
    let step = USER_CLIENTS_TTL / 4;
    for _ in 0..5 {
        tokio::time::advance(step).await;
        let renewed = store
            .refresh_routes(&[("cy-tab".to_owned(), cy.route.clone())], step * 2)
            .await
            .expect("renew");
        assert_ne!(renewed[0].renewal, Renewal::Replaced);
    }
    // The next connect finds the sweep due.
    store.claim_route("dee-phone", "dee", "n1", LEASE).await.expect("claim");

    assert_eq!(
        store.held(),
        MemoryHeld {
            clients: 3, // bob-phone (pending message), cy-tab (connected), dee-phone (new)
            queues: 1,  // bob-phone
            routes: 2,  // cy-tab, dee-phone
            users: 1,   // dee: the other users' lists lapsed
        }
    );
    assert_eq!(store.client_owner("ann-old").await.expect("owner"), None);
    assert_eq!(
        store.client_owner("bob-phone").await.expect("owner").as_deref(),
        Some("bob"),
        "a client with a pending message keeps its owner"
    );
    assert!(
        matches!(
            store.claim_route("bob-phone", "mallory", "n1", LEASE).await,
            Err(ClaimError::Taken)
        ),
        "and nobody else can take it"
    );
    assert_eq!(
        store.client_owner("cy-tab").await.expect("owner").as_deref(),
        Some("cy")
    );
    let pending = store.pending("bob-phone", 0, 10, now_ms()).await.expect("pending");
    assert_eq!(pending.messages.len(), 1, "bob's message is still there");
}

#[tokio::test(start_paused = true)]
async fn sweeps_come_at_most_once_per_interval() {
    let store = MemoryStore::new();
    let now = now_ms();
    let long_ago = now - STATUS_RETENTION_MS - 3_600_000;
    store.claim_route("first", "u", "n1", LEASE).await.expect("claim");
    store
        .enqueue("gone", &message(b"x", long_ago - 1_000, long_ago), LIMITS, now)
        .await
        .expect("enqueue");
    tokio::time::advance(Duration::from_secs(59)).await;
    store.claim_route("second", "u", "n1", LEASE).await.expect("claim");
    assert_eq!(store.held().queues, 1, "no sweep within the interval");
    tokio::time::advance(Duration::from_secs(2)).await;
    store.claim_route("third", "u", "n1", LEASE).await.expect("claim");
    assert_eq!(store.held().queues, 0, "a sweep once it is due");
}
