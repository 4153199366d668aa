//! One contract, two stores: every test runs against `MemoryStore` and
//! against a `RedisStore` on a private `redis-server`.

use std::sync::Arc;
use std::time::Duration;

use duplex_protocol::MAX_LAST_SEQ;
use duplex_store::{ClaimError, Enqueued, MessageRecord, MessageState, NewMessage, QueueLimits, Renewal, Route, Store};

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

const NOW: u64 = 1_800_000_000_000;
const LIMITS: QueueLimits = QueueLimits {
    max_messages: 100,
    max_bytes: 10_000,
};

fn msg(payload: &str, ttl_ms: u64, key: Option<&str>) -> NewMessage {
    NewMessage {
        record: MessageRecord {
            reply_to: None,
            nonce: rand::random(),
            headers: Default::default(),
            payload: payload.as_bytes().to_vec().into(),
            created_ms: NOW,
            expires_ms: NOW + ttl_ms,
        },
        idempotency_key: key.map(str::to_owned),
        idempotency_ttl_ms: 60_000,
    }
}

fn stored(e: Enqueued) -> (u64, String) {
    match e {
        Enqueued::Stored { seq, msg_id, .. } => (seq, msg_id),
        other => panic!("expected Stored, got {other:?}"),
    }
}

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
    routes_are_leases_owned_by_one_connection,
    a_client_id_belongs_to_the_user_who_first_claimed_it,
    refresh_renews_restores_and_reports_replaced,
    leases_expire,
    users_list_their_clients,
    concurrent_claims_get_distinct_ordered_epochs,
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
