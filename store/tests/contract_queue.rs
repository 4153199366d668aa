//! The message queue contract: every test runs against `MemoryStore` and
//! against a `RedisStore` on a private `redis-server`, Sentinel and Cluster.

mod common;

use std::sync::Arc;

use common::{msg, stored, LIMITS, NOW, TTL};
use duplex_protocol::MAX_LAST_SEQ;
use duplex_store::{Enqueued, MessageState, QueueLimits, Store};

async fn messages_get_ordered_seqs_and_cumulative_acks(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for i in 1..=5u64 {
        let (seq, id) = stored(
            store
                .enqueue("q1", &msg(&format!("m{i}"), 60_000, None), LIMITS, NOW)
                .await
                .expect("enqueue"),
        );
        assert_eq!(seq, i);
        ids.push(id);
    }
    let p = store.pending("q1", 2, 10, NOW).await.expect("pending");
    assert_eq!(p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![3, 4, 5]);
    assert_eq!(p.messages[0].record.payload.as_ref(), b"m3");
    assert_eq!(p.messages[0].msg_id, ids[2]);
    assert_eq!(store.pending("q1", 0, 2, NOW).await.expect("pending").messages.len(), 2);

    let (client, seq, nonce) = duplex_store::parse_message_id(&ids[3]).expect("our id");
    let status = |s: Arc<dyn Store>| async move {
        s.message_status(client, seq, nonce, NOW + 1)
            .await
            .expect("status")
            .expect("known")
    };
    assert_eq!(status(store.clone()).await.state, MessageState::Queued);
    store.mark_sent("q1", 4, NOW + 1).await.expect("sent");
    assert_eq!(status(store.clone()).await.state, MessageState::Sent);
    assert_eq!(
        store.message_status(client, seq, nonce ^ 1, NOW).await.expect("status"),
        None,
        "wrong nonce"
    );

    assert_eq!(store.ack("q1", 4, NOW + 2).await.expect("ack"), 4);
    let st = status(store.clone()).await;
    assert_eq!(
        (st.state, st.acked_at, st.sent_at),
        (MessageState::Acked, Some(NOW + 2), Some(NOW + 1))
    );
    let p = store.pending("q1", 0, 10, NOW).await.expect("pending");
    assert_eq!((p.messages.len(), p.messages[0].seq, p.acked), (1, 5, 4));
    assert_eq!(
        store.ack("q1", 2, NOW).await.expect("ack"),
        0,
        "acks are cumulative and never go back"
    );
    let info = store.queue_info("q1", NOW).await.expect("info");
    assert_eq!((info.pending, info.pending_bytes, info.last_acked_seq), (1, 2, 4));
}

async fn enqueue_reports_the_route_read_in_the_same_step(store: Arc<dyn Store>) {
    match store
        .enqueue("rt1", &msg("a", 60_000, None), LIMITS, NOW)
        .await
        .expect("enqueue")
    {
        Enqueued::Stored { route, .. } => assert_eq!(route, None),
        other => panic!("{other:?}"),
    }
    let claim = store.claim_route("rt1", "u", "node-x", TTL).await.expect("claim");
    match store
        .enqueue("rt1", &msg("b", 60_000, None), LIMITS, NOW)
        .await
        .expect("enqueue")
    {
        Enqueued::Stored { route, .. } => assert_eq!(route, Some(claim.route)),
        other => panic!("{other:?}"),
    }
}

async fn sent_marks_in_bulk_record_sent_and_never_undo_acks(store: Arc<dyn Store>) {
    let (_, id1) = stored(
        store
            .enqueue("sm", &msg("a", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    let (_, id2) = stored(
        store
            .enqueue("sm", &msg("b", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    store.ack("sm", 2, NOW + 1).await.expect("ack");
    store
        .mark_sent_many(&[("sm".to_owned(), 1), ("sm".to_owned(), 2)], NOW + 2)
        .await
        .expect("marks");
    for id in [id1, id2] {
        let (c, s, n) = duplex_store::parse_message_id(&id).expect("id");
        let st = store
            .message_status(c, s, n, NOW + 3)
            .await
            .expect("status")
            .expect("known");
        assert_eq!(
            (st.state, st.sent_at),
            (MessageState::Acked, None),
            "a late sent mark never overwrites an ack, nor claims a send after it"
        );
    }
    let (_, id3) = stored(
        store
            .enqueue("sm", &msg("c", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    store
        .mark_sent_many(&[("sm".to_owned(), 3)], NOW + 4)
        .await
        .expect("marks");
    let (c, s, n) = duplex_store::parse_message_id(&id3).expect("id");
    let st = store
        .message_status(c, s, n, NOW + 5)
        .await
        .expect("status")
        .expect("known");
    assert_eq!((st.state, st.sent_at), (MessageState::Sent, Some(NOW + 4)));
}

async fn idempotency_keys_store_once_per_client(store: Arc<dyn Store>) {
    let (seq, id) = stored(
        store
            .enqueue("i1", &msg("a", 60_000, Some("k1")), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    match store
        .enqueue("i1", &msg("a", 60_000, Some("k1")), LIMITS, NOW)
        .await
        .expect("enqueue")
    {
        Enqueued::Duplicate { seq: s, msg_id } => assert_eq!((s, msg_id), (seq, id)),
        other => panic!("expected Duplicate, got {other:?}"),
    }
    stored(
        store
            .enqueue("i2", &msg("a", 60_000, Some("k1")), LIMITS, NOW)
            .await
            .expect("other client"),
    );
    assert_eq!(store.queue_info("i1", NOW).await.expect("info").pending, 1);
}

async fn caps_refuse_new_messages_and_store_nothing(store: Arc<dyn Store>) {
    let limits = QueueLimits {
        max_messages: 2,
        max_bytes: 10,
    };
    stored(
        store
            .enqueue("c1", &msg("12345", 60_000, None), limits, NOW)
            .await
            .expect("enqueue"),
    );
    assert!(matches!(
        store
            .enqueue("c1", &msg("1234567", 60_000, None), limits, NOW)
            .await
            .expect("enqueue"),
        Enqueued::Full { messages: 1, bytes: 5 }
    ));
    stored(
        store
            .enqueue("c1", &msg("12345", 60_000, None), limits, NOW)
            .await
            .expect("enqueue"),
    );
    assert!(matches!(
        store
            .enqueue("c1", &msg("1", 60_000, None), limits, NOW)
            .await
            .expect("enqueue"),
        Enqueued::Full { .. }
    ));
    let info = store.queue_info("c1", NOW).await.expect("info");
    assert_eq!((info.pending, info.pending_bytes), (2, 10));
    store.ack("c1", 2, NOW).await.expect("ack");
    stored(
        store
            .enqueue("c1", &msg("1", 60_000, None), limits, NOW)
            .await
            .expect("room again after ack"),
    );
}

async fn expired_messages_leave_and_say_so(store: Arc<dyn Store>) {
    let (_, short) = stored(
        store
            .enqueue("t1", &msg("short", 1_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    stored(
        store
            .enqueue("t1", &msg("long", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    let later = NOW + 5_000;
    let p = store.pending("t1", 0, 10, later).await.expect("pending");
    assert_eq!(
        p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![2],
        "seq 1 expired"
    );
    let (client, seq, nonce) = duplex_store::parse_message_id(&short).expect("id");
    let st = store
        .message_status(client, seq, nonce, later)
        .await
        .expect("status")
        .expect("known");
    assert_eq!(st.state, MessageState::Expired);
    let info = store.queue_info("t1", later).await.expect("info");
    assert_eq!((info.pending, info.expired, info.pending_bytes), (1, 1, 4));
}

async fn resume_keeps_new_seqs_above_what_the_client_has_seen(store: Arc<dyn Store>) {
    // The store lost this client's data, but the client remembers seq 100:
    // nothing is acked (nothing was written here), later seqs stay above it.
    assert_eq!(store.resume("r1", 100, NOW).await.expect("resume"), 0);
    let (seq, _) = stored(
        store
            .enqueue("r1", &msg("x", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    assert_eq!(seq, 101);
    let pending = store.pending("r1", 0, 10, NOW).await.expect("pending");
    assert_eq!((pending.acked, pending.messages.len()), (0, 1));
}

async fn a_resume_acks_only_what_earlier_connections_were_written(store: Arc<dyn Store>) {
    for i in 1..=5 {
        store
            .enqueue("w1", &msg(&format!("m{i}"), 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue");
    }
    // No connection was written anything: a last_seq of 5 removes nothing.
    assert_eq!(store.resume("w1", 5, NOW).await.expect("resume"), 0);
    assert_eq!(store.queue_info("w1", NOW).await.expect("info").pending, 5);
    store.note_written("w1", 3).await.expect("note");
    store.note_written("w1", 2).await.expect("a lower mark never lowers it");
    assert_eq!(store.resume("w1", 5, NOW).await.expect("resume"), 3);
    let pending = store.pending("w1", 0, 10, NOW).await.expect("pending");
    assert_eq!(pending.acked, 3);
    assert_eq!(pending.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5]);
    // A last_seq below the mark acks only up to itself.
    store.note_written("w1", 5).await.expect("note");
    assert_eq!(store.resume("w1", 4, NOW).await.expect("resume"), 4);
    assert_eq!(store.queue_info("w1", NOW).await.expect("info").pending, 1);
    // A client acked beyond what was noted (the note was lost): its acks count.
    store.ack("w1", 5, NOW).await.expect("ack");
    assert_eq!(store.resume("w1", 5, NOW).await.expect("resume"), 5);
    // No queue, no note: nothing is stored for a client without messages.
    store.note_written("nobody", 9).await.expect("note");
    assert_eq!(store.resume("nobody", 9, NOW).await.expect("resume"), 0);
}

async fn a_huge_last_seq_never_wraps_the_counter_or_breaks_later_pushes(store: Arc<dyn Store>) {
    store
        .enqueue("big", &msg("before", 60_000, None), LIMITS, NOW)
        .await
        .expect("enqueue");
    assert_eq!(store.resume("big", u64::MAX, NOW).await.expect("resume"), 0);
    let (seq, _) = stored(
        store
            .enqueue("big", &msg("after", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue after a huge last_seq"),
    );
    assert_eq!(seq, MAX_LAST_SEQ + 1);
    let pending = store.pending("big", 0, 10, NOW).await.expect("pending");
    assert_eq!(
        pending.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [1, MAX_LAST_SEQ + 1]
    );
    assert_eq!(store.ack("big", MAX_LAST_SEQ + 1, NOW).await.expect("ack"), 2);
    let (seq, _) = stored(
        store
            .enqueue("big", &msg("later", 60_000, None), LIMITS, NOW)
            .await
            .expect("enqueue"),
    );
    assert_eq!(seq, MAX_LAST_SEQ + 2);
}

async fn concurrent_enqueues_get_unique_consecutive_seqs(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for _ in 0..25 {
                seqs.push(
                    stored(
                        store
                            .enqueue("cc", &msg("x", 60_000, None), LIMITS, NOW)
                            .await
                            .expect("enqueue"),
                    )
                    .0,
                );
            }
            seqs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let seqs = t.await.expect("join");
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "each caller sees increasing seqs");
        all.extend(seqs);
    }
    all.sort();
    assert_eq!(all, (1..=100).collect::<Vec<u64>>());
}

async fn the_overview_ranks_clients_by_backlog(store: Arc<dyn Store>) {
    for (client, n) in [("oa", 3), ("ob", 1), ("oc", 2)] {
        for _ in 0..n {
            store
                .enqueue(client, &msg("12345", 60_000, None), LIMITS, NOW)
                .await
                .expect("enqueue");
        }
    }
    store.ack("ob", 1, NOW).await.expect("ack");
    let o = store.overview(2, 100).await.expect("overview");
    let top: Vec<(&str, u64)> = o
        .top_pending
        .iter()
        .map(|b| (b.client_id.as_str(), b.pending))
        .collect();
    assert_eq!(top, [("oa", 3), ("oc", 2)]);
    assert_eq!((o.scanned, o.complete, o.pending), (3, true, 5));
    assert!(o.top_pending[0].pending_bytes >= 15, "{o:?}");
    let sample = store.overview(10, 2).await.expect("overview");
    assert_eq!((sample.scanned, sample.complete), (2, false));
}

/// Expiry and the cap's count follow messages whatever order their TTLs
/// come in, through acks and expiries.
async fn caps_and_expiry_follow_mixed_ttls_acks_and_expiries(store: Arc<dyn Store>) {
    let limits = QueueLimits {
        max_messages: 3,
        max_bytes: 1_000,
    };
    let enqueue = |payload: &'static str, ttl_ms: u64, now: u64| {
        let store = store.clone();
        async move {
            store
                .enqueue("x1", &msg(payload, ttl_ms, None), limits, now)
                .await
                .expect("enqueue")
        }
    };
    // Stored at NOW: a long-lived message first, then a short-lived one, then another long one.
    stored(enqueue("long-1", 60_000, NOW).await);
    stored(enqueue("short", 1_000, NOW).await);
    stored(enqueue("long-2", 60_000, NOW).await);
    assert!(matches!(
        enqueue("over", 60_000, NOW).await,
        Enqueued::Full { messages: 3, .. }
    ));
    // After the short one's TTL: it leaves, which makes room for one more.
    let later = NOW + 2_000;
    let (seq, _) = stored(enqueue("long-3", 60_000, later).await);
    assert_eq!(seq, 4);
    let p = store.pending("x1", 0, 10, later).await.expect("pending");
    assert_eq!(p.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 3, 4]);
    assert!(matches!(
        enqueue("over", 60_000, later).await,
        Enqueued::Full { messages: 3, .. }
    ));
    // An ack frees its messages' places.
    store.ack("x1", 3, later).await.expect("ack");
    stored(enqueue("long-5", 60_000, later).await);
    stored(enqueue("long-6", 60_000, later).await);
    assert!(matches!(
        enqueue("over", 60_000, later).await,
        Enqueued::Full { messages: 3, .. }
    ));
    // All of them expire together; the queue is empty and open again.
    let much_later = NOW + 120_000;
    let p = store.pending("x1", 0, 10, much_later).await.expect("pending");
    assert!(p.messages.is_empty(), "{:?}", p.messages);
    assert_eq!(store.queue_info("x1", much_later).await.expect("info").pending, 0);
    let (seq, _) = stored(enqueue("fresh", 60_000, much_later).await);
    assert_eq!(seq, 7);
}

/// Many clients at once, as a loaded node calls the store: each call gets
/// its own answer (the Redis store packs concurrent calls into shared
/// script calls), and each client's seqs, payloads and acks stay its own.
async fn concurrent_calls_for_many_clients_each_get_their_own_answer(store: Arc<dyn Store>) {
    let (clients, per_client) = (40, 25u64);
    let enqueues = (0..clients * per_client as usize).map(|i| {
        let store = store.clone();
        let (client, payload) = (format!("many{}", i % clients), format!("p{i}"));
        async move {
            let e = store.enqueue(&client, &msg(&payload, 60_000, None), LIMITS, NOW).await;
            (client, payload, stored(e.expect("enqueue")).0)
        }
    });
    let answers = futures_util::future::join_all(enqueues).await;
    for c in 0..clients {
        let client = format!("many{c}");
        let mut mine: Vec<(u64, String)> = answers
            .iter()
            .filter(|(owner, _, _)| *owner == client)
            .map(|(_, payload, seq)| (*seq, payload.clone()))
            .collect();
        mine.sort();
        let seqs: Vec<u64> = mine.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=per_client).collect::<Vec<_>>(), "{client}");
        let pending = store.pending(&client, 0, 100, NOW).await.expect("pending");
        let held: Vec<(u64, String)> = pending
            .messages
            .iter()
            .map(|m| (m.seq, String::from_utf8_lossy(&m.record.payload).into_owned()))
            .collect();
        assert_eq!(held, mine, "{client}: each seq holds the payload it was answered for");
    }
    let acks = (0..clients).map(|c| {
        let store = store.clone();
        async move { store.ack(&format!("many{c}"), 10, NOW).await.expect("ack") }
    });
    assert_eq!(futures_util::future::join_all(acks).await, vec![10; clients]);
    let infos = (0..clients).map(|c| {
        let store = store.clone();
        async move { store.queue_info(&format!("many{c}"), NOW).await.expect("info") }
    });
    for info in futures_util::future::join_all(infos).await {
        assert_eq!((info.pending, info.last_acked_seq), (per_client - 10, 10));
    }
}

duplex_testkit::store_contract!(
    concurrent_calls_for_many_clients_each_get_their_own_answer,
    caps_and_expiry_follow_mixed_ttls_acks_and_expiries,
    the_overview_ranks_clients_by_backlog,
    messages_get_ordered_seqs_and_cumulative_acks,
    idempotency_keys_store_once_per_client,
    sent_marks_in_bulk_record_sent_and_never_undo_acks,
    enqueue_reports_the_route_read_in_the_same_step,
    caps_refuse_new_messages_and_store_nothing,
    expired_messages_leave_and_say_so,
    resume_keeps_new_seqs_above_what_the_client_has_seen,
    a_resume_acks_only_what_earlier_connections_were_written,
    a_huge_last_seq_never_wraps_the_counter_or_breaks_later_pushes,
    concurrent_enqueues_get_unique_consecutive_seqs,
);
