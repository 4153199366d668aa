//! Store contract, continued (every backend): expiry reports, the source of
//! `expired` events. A message stored with `report_expiry` that expires
//! unacked is returned by `take_expired` exactly once, however it was
//! removed (by a scan, by a read or an enqueue that tidied the queue) and
//! however many scanners ask at once.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::{stored, LIMITS, NOW};
use duplex_store::{ExpiredMessage, NewMessage, Store};

fn reported(payload: &str, created: u64, ttl_ms: u64) -> NewMessage {
    let mut m = common::msg(payload, ttl_ms, None);
    m.record.created_ms = created;
    m.record.expires_ms = created + ttl_ms;
    m.report_expiry = true;
    m
}

async fn put(store: &Arc<dyn Store>, client: &str, msg: &NewMessage, now: u64) -> String {
    stored(store.enqueue(client, msg, LIMITS, now).await.expect("enqueue")).1
}

/// Every report due at `now`, calling until the store says nothing more is due (bounded).
async fn take_all(store: &Arc<dyn Store>, now: u64, max_clients: usize) -> Vec<ExpiredMessage> {
    let mut out = Vec::new();
    for _ in 0..1_000 {
        let scan = store.take_expired(now, max_clients).await.expect("take_expired");
        assert_eq!(scan.lost, 0);
        out.extend(scan.messages);
        if !scan.more {
            return out;
        }
    }
    panic!("take_expired kept saying more is due");
}

fn ids(found: &[ExpiredMessage]) -> Vec<String> {
    let mut ids: Vec<String> = found.iter().map(|m| m.msg_id.clone()).collect();
    ids.sort();
    ids
}

async fn an_expiry_is_reported_once_with_its_message(store: Arc<dyn Store>) {
    let c = "exp-once";
    let mut short = Vec::new();
    for i in 0..3 {
        short.push(put(&store, c, &reported(&format!("m{i}"), NOW, 1_000), NOW).await);
    }
    let kept = put(&store, c, &reported("long", NOW, 600_000), NOW).await;
    assert!(take_all(&store, NOW + 500, 16).await.is_empty(), "nothing is due yet");
    let found = take_all(&store, NOW + 2_000, 16).await;
    short.sort();
    assert_eq!(ids(&found), short);
    let first = found.iter().find(|m| m.seq == 1).expect("seq 1");
    assert_eq!(
        (first.client_id.as_str(), first.created_ms, first.expires_ms),
        (c, NOW, NOW + 1_000)
    );
    assert_eq!(first.user_id, None, "the client never connected");
    assert!(take_all(&store, NOW + 3_000, 16).await.is_empty(), "reported once");
    let info = store.queue_info(c, NOW + 3_000).await.expect("info");
    assert_eq!((info.pending, info.expired), (1, 3));
    assert!(!kept.is_empty());
}

async fn expiries_a_read_removed_are_reported_too(store: Arc<dyn Store>) {
    let c = "exp-read";
    let a = put(&store, c, &reported("a", NOW, 1_000), NOW).await;
    let b = put(&store, c, &reported("b", NOW, 1_000), NOW).await;
    // The client's read tidies the queue before any scan comes by.
    let pending = store.pending(c, 0, 100, NOW + 2_000).await.expect("pending");
    assert!(pending.messages.is_empty());
    // So does an enqueue.
    let later = put(&store, c, &reported("c", NOW + 2_000, 1_000), NOW + 2_000).await;
    let mut want = vec![a, b];
    want.sort();
    assert_eq!(ids(&take_all(&store, NOW + 2_500, 16).await), want);
    assert_eq!(ids(&take_all(&store, NOW + 4_000, 16).await), vec![later]);
}

async fn acked_and_unasked_messages_are_not_reported(store: Arc<dyn Store>) {
    let c = "exp-acked";
    put(&store, c, &reported("a", NOW, 1_000), NOW).await;
    let b = put(&store, c, &reported("b", NOW, 1_000), NOW).await;
    assert_eq!(store.ack(c, 1, NOW + 100).await.expect("ack"), 1);
    let quiet = "exp-quiet";
    put(&store, quiet, &common::msg("not asked", 1_000, None), NOW).await;
    assert_eq!(ids(&take_all(&store, NOW + 2_000, 16).await), vec![b]);
    // All acked: the client leaves the index, and later messages bring it back.
    let d = "exp-all-acked";
    put(&store, d, &reported("x", NOW, 1_000), NOW).await;
    store.ack(d, 1, NOW + 100).await.expect("ack");
    assert!(take_all(&store, NOW + 2_000, 16).await.is_empty());
    let again = put(&store, d, &reported("y", NOW + 3_000, 1_000), NOW + 3_000).await;
    assert_eq!(ids(&take_all(&store, NOW + 5_000, 16).await), vec![again]);
}

async fn the_owner_is_reported(store: Arc<dyn Store>) {
    let c = "exp-owned";
    store
        .claim_route(c, "user-7", "node-a", Duration::from_secs(30))
        .await
        .expect("claim");
    put(&store, c, &reported("a", NOW, 1_000), NOW).await;
    let found = take_all(&store, NOW + 2_000, 16).await;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].user_id.as_deref(), Some("user-7"));
}

async fn concurrent_scanners_report_each_expiry_once(store: Arc<dyn Store>) {
    let mut want = HashSet::new();
    for i in 0..40 {
        let c = format!("exp-many-{i}");
        for j in 0..3 {
            want.insert(put(&store, &c, &reported(&format!("{j}"), NOW, 1_000 + i), NOW).await);
        }
    }
    let scanners = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move { take_all(&store, NOW + 5_000, 3).await })
    });
    let mut seen = Vec::new();
    for scanner in scanners {
        seen.extend(scanner.await.expect("scanner").into_iter().map(|m| m.msg_id));
    }
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "an expiry was reported twice");
    assert_eq!(unique, want);
}

duplex_testkit::store_contract!(
    an_expiry_is_reported_once_with_its_message,
    expiries_a_read_removed_are_reported_too,
    acked_and_unasked_messages_are_not_reported,
    the_owner_is_reported,
    concurrent_scanners_report_each_expiry_once,
);
