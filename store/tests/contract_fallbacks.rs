//! Store contract, continued (every backend): the push fallback's schedule.
//! A fallback is handed out once it is due, to one taker at a time; it comes
//! back after its lease unless finished (the node that took it died); one
//! whose message expired is dropped and counted; the schedule is bounded.

use std::collections::HashMap;
use std::sync::Arc;

use duplex_store::{Scheduled, Store};

const NOW: u64 = 1_800_000_000_000;
const LEASE: u64 = 60_000;
const ROOM: usize = 10_000;

async fn fallbacks_come_due_once_per_lease_until_finished(store: Arc<dyn Store>) {
    let spec = b"{\"title\":\"hi\"}\n\x00binary";
    let kept = store
        .schedule_fallback("phone-1", 7, NOW + 1_000, NOW + 5 * LEASE, spec, ROOM)
        .await
        .expect("schedule");
    assert_eq!(kept, Scheduled::Waiting);
    // Again: the same one, not a second.
    store
        .schedule_fallback("phone-1", 7, NOW + 1_000, NOW + 5 * LEASE, spec, ROOM)
        .await
        .expect("schedule again");
    store
        .schedule_fallback("phone-2", 1, NOW + 5_000, NOW + 6_000, b"other", ROOM)
        .await
        .expect("schedule");

    let early = store.take_due_fallbacks(NOW + 999, LEASE, 10).await.expect("take");
    assert!(early.due.is_empty() && early.expired == 0, "{early:?}");

    let due = store.take_due_fallbacks(NOW + 1_000, LEASE, 10).await.expect("take");
    assert_eq!(due.due.len(), 1, "{due:?}");
    let taken = &due.due[0];
    assert_eq!((taken.client_id.as_str(), taken.seq), ("phone-1", 7));
    assert_eq!(taken.expires_ms, NOW + 5 * LEASE);
    assert_eq!(taken.spec, spec);
    // Leased: nobody else gets it while the lease runs.
    let during = store.take_due_fallbacks(NOW + 2_000, LEASE, 10).await.expect("take");
    assert!(during.due.is_empty(), "{during:?}");
    // The lease ran out unfinished (its taker died): due again, once.
    let again = store
        .take_due_fallbacks(NOW + 1_000 + LEASE, LEASE, 10)
        .await
        .expect("take");
    let ids: Vec<(&str, u64)> = again.due.iter().map(|d| (d.client_id.as_str(), d.seq)).collect();
    assert_eq!(ids, vec![("phone-1", 7)], "phone-2's message expired meanwhile");
    assert_eq!(again.expired, 1, "phone-2's fallback dropped and counted");
    store.finish_fallback("phone-1", 7).await.expect("finish");
    store.finish_fallback("phone-1", 7).await.expect("finish twice");
    let after = store
        .take_due_fallbacks(NOW + 10 * LEASE, LEASE, 10)
        .await
        .expect("take");
    assert!(after.due.is_empty() && after.expired == 0, "{after:?}");

    // A finished fallback can be scheduled anew (another delivery of its message id).
    store
        .schedule_fallback("phone-1", 7, NOW, NOW + 30_000, spec, ROOM)
        .await
        .expect("schedule");
    let anew = store.take_due_fallbacks(NOW, LEASE, 10).await.expect("take");
    assert_eq!(anew.due.len(), 1);
}

async fn the_schedule_is_bounded(store: Arc<dyn Store>) {
    // With room for one, a second fallback of the same client is not kept
    // (on Redis the bound is per shard, and a client's fallbacks share one).
    let first = store
        .schedule_fallback("phone-b", 1, NOW, NOW + 30_000, b"one", 1)
        .await
        .expect("schedule");
    let second = store
        .schedule_fallback("phone-b", 2, NOW, NOW + 30_000, b"two", 1)
        .await
        .expect("schedule");
    assert_eq!((first, second), (Scheduled::Waiting, Scheduled::Full));
    let due = store.take_due_fallbacks(NOW, LEASE, 10).await.expect("take");
    assert_eq!(due.due.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1]);
}

async fn concurrent_takers_each_get_a_fallback_once(store: Arc<dyn Store>) {
    for i in 0..120u64 {
        store
            .schedule_fallback(&format!("phone-{}", i % 30), i, NOW + i, NOW + 30_000, b"x", ROOM)
            .await
            .expect("schedule");
    }
    let takers = (0..4).map(|_| {
        let store = store.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..100 {
                let taken = store.take_due_fallbacks(NOW + 1_000, LEASE, 16).await.expect("take");
                if taken.due.is_empty() && !taken.more {
                    break;
                }
                got.extend(taken.due.into_iter().map(|d| (d.client_id, d.seq)));
            }
            got
        })
    });
    let mut seen: HashMap<(String, u64), usize> = HashMap::new();
    for taker in takers {
        for id in taker.await.expect("taker") {
            *seen.entry(id).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), 120, "every fallback handed out");
    assert!(seen.values().all(|&n| n == 1), "each once: {seen:?}");
}

duplex_testkit::store_contract!(
    fallbacks_come_due_once_per_lease_until_finished,
    the_schedule_is_bounded,
    concurrent_takers_each_get_a_fallback_once,
);
