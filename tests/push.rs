//! The push API and at-least-once delivery, on both stores.

#[macro_use]
mod common;

use std::collections::HashMap;

use common::*;
use duplex_shared::protocol::Frame;
use serde_json::json;

async fn online_push_arrives_and_its_ack_is_recorded(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    let item = node.push_to("phone-1", json!({"hello": "world"})).await;
    assert_eq!(item["state"], "delivered_to_node");
    assert_eq!(item["seq"], 1);
    let push = recv_push(&mut conn).await;
    assert_eq!((push.seq, json_payload(&push)), (1, json!({"hello": "world"})));
    assert_eq!(push.msg_id, item["message_id"].as_str().expect("id"));
    let id = push.msg_id.clone();
    eventually("status sent", || async {
        node.get(&format!("/v1/messages/{id}")).await.1["state"] == "sent"
    })
    .await;
    ack(&mut conn, 1).await;
    eventually("status acked", || async {
        node.get(&format!("/v1/messages/{id}")).await.1["state"] == "acked"
    })
    .await;
    let (_, client) = node.get("/v1/clients/phone-1").await;
    assert_eq!(
        (
            client["online"].clone(),
            client["pending"].clone(),
            client["last_acked_seq"].clone()
        ),
        (json!(true), json!(0), json!(1))
    );
    assert!(client["connected_since"].as_u64().is_some(), "{client}");
}

async fn offline_push_arrives_after_connect_and_unacked_ones_come_again(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    for i in 1..=3 {
        let item = node.push_to("phone-2", json!(i)).await;
        assert_eq!(item["state"], "queued");
    }
    let mut conn = node.connect_ws("bob", "phone-2", 0).await;
    let first: Vec<_> = [
        recv_push(&mut conn).await,
        recv_push(&mut conn).await,
        recv_push(&mut conn).await,
    ]
    .to_vec();
    assert_eq!(first.iter().map(|p| p.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    ack(&mut conn, 1).await;
    // Make sure the ack landed before leaving.
    eventually("ack stored", || async {
        node.get("/v1/clients/phone-2").await.1["last_acked_seq"] == 1
    })
    .await;
    drop(conn);
    // Reconnect without last_seq: seq 1 was acked, 2 and 3 come again, same ids.
    let mut conn = node.connect("bob", "phone-2", 0).await;
    let again = [recv_push(&mut conn).await, recv_push(&mut conn).await];
    assert_eq!(
        again.iter().map(|p| (p.seq, p.msg_id.clone())).collect::<Vec<_>>(),
        first[1..].iter().map(|p| (p.seq, p.msg_id.clone())).collect::<Vec<_>>()
    );
    drop(conn);
    // With last_seq 3, nothing is replayed; a new push follows as seq 4.
    let mut conn = node.connect("bob", "phone-2", 3).await;
    node.push_to("phone-2", json!("four")).await;
    assert_eq!(recv_push(&mut conn).await.seq, 4);
}

async fn order_holds_under_eight_concurrent_pushers(kind: StoreKind) {
    let node = std::sync::Arc::new(start(kind, |_| {}).await);
    let mut conn = node.connect("carol", "phone-3", 0).await;
    let mut pushers = Vec::new();
    for p in 0..8 {
        let node = node.clone();
        pushers.push(tokio::spawn(async move {
            for i in 0..25 {
                node.push_to("phone-3", json!({"p": p, "i": i})).await;
            }
        }));
    }
    let mut last_seq = 0;
    let mut last_by_pusher: HashMap<u64, i64> = HashMap::new();
    for _ in 0..200 {
        let push = match recv(&mut conn).await {
            Some(Frame::Push(p)) => p,
            other => panic!("expected push, got {other:?}"),
        };
        assert_eq!(push.seq, last_seq + 1, "seqs arrive in order without holes");
        last_seq = push.seq;
        let v = json_payload(&push);
        let (p, i) = (v["p"].as_u64().expect("p"), v["i"].as_i64().expect("i"));
        assert!(
            i > *last_by_pusher.get(&p).unwrap_or(&-1),
            "each pusher's messages stay in its order"
        );
        last_by_pusher.insert(p, i);
    }
    for t in pushers {
        t.await.expect("pusher");
    }
}

async fn user_push_reaches_every_client_of_the_user(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut phone = node.connect("dave", "dave-phone", 0).await;
    let mut tablet = node.connect_ws("dave", "dave-tablet", 0).await;
    let _other = node.connect("erin", "erin-phone", 0).await;
    let (status, body) = node
        .post("/v1/push", &json!({"user_ids": ["dave"], "payload": "hi"}))
        .await;
    assert_eq!(status, 202, "{body}");
    let mut targets: Vec<_> = body["messages"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["client_id"].as_str().expect("id").to_owned())
        .collect();
    targets.sort();
    assert_eq!(targets, vec!["dave-phone", "dave-tablet"]);
    assert_eq!(json_payload(&recv_push(&mut phone).await), json!("hi"));
    assert_eq!(json_payload(&recv_push(&mut tablet).await), json!("hi"));
}

async fn qos0_reaches_online_clients_and_is_never_stored(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut online = node.connect("f", "online-1", 0).await;
    let (status, body) = node
        .post(
            "/v1/push",
            &json!({"client_ids": ["online-1", "offline-1"], "payload": 1, "qos": 0}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let states: HashMap<String, String> = body["messages"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| {
            (
                m["client_id"].as_str().expect("c").to_owned(),
                m["state"].as_str().expect("s").to_owned(),
            )
        })
        .collect();
    assert_eq!(states["online-1"], "delivered_to_node");
    assert_eq!(states["offline-1"], "offline");
    assert_eq!(recv_push(&mut online).await.seq, 0);
    assert_eq!(node.get("/v1/clients/offline-1").await.1["pending"], 0);
    let mut later = node.connect("f", "offline-1", 0).await;
    ack(&mut later, 0).await; // nothing to receive; the ping proves the line is idle
    later
        .send(&Frame::Ping(duplex_shared::protocol::Ping { id: 9 }))
        .await
        .expect("ping");
    assert!(
        matches!(recv(&mut later).await, Some(Frame::Pong(_))),
        "no stored qos-0 message is replayed"
    );
    // `all` is qos 0 only and reaches every connected client.
    let (status, body) = node
        .post("/v1/push", &json!({"all": true, "payload": "all", "qos": 0}))
        .await;
    assert_eq!((status, body["delivered"].clone()), (202, json!(2)));
    assert_eq!(json_payload(&recv_push(&mut online).await), json!("all"));
}

async fn idempotent_retry_stores_once(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let push = json!({"client_ids": ["g1"], "payload": "x", "idempotency_key": "order-42"});
    let (s1, b1) = node.post("/v1/push", &push).await;
    let (s2, b2) = node.post("/v1/push", &push).await;
    assert_eq!((s1, s2), (202, 202));
    assert_eq!(b1["messages"][0]["message_id"], b2["messages"][0]["message_id"]);
    assert_eq!(b2["messages"][0]["duplicate"], true);
    assert_eq!(node.get("/v1/clients/g1").await.1["pending"], 1);
}

async fn expired_messages_show_as_expired_and_the_client_hears_of_the_gap(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let (_, short) = node
        .post("/v1/push", &json!({"client_ids": ["h1"], "payload": "short", "ttl": 1}))
        .await;
    node.push_to("h1", json!("long")).await;
    let id = short["messages"][0]["message_id"].as_str().expect("id").to_owned();
    eventually("short message expired", || async {
        node.get(&format!("/v1/messages/{id}")).await.1["state"] == "expired"
    })
    .await;
    let mut conn = node.connect("h", "h1", 0).await;
    match recv(&mut conn).await {
        Some(Frame::Gap(g)) => assert_eq!((g.from, g.to, g.reason.as_str()), (1, 1, "expired")),
        other => panic!("expected a gap, got {other:?}"),
    }
    assert_eq!(recv_push(&mut conn).await.seq, 2);
    assert_eq!(node.get("/v1/clients/h1").await.1["expired"], 1);
    let text = node.metrics.render();
    assert!(text.contains("duplex_gaps_total 1"), "{text}");
    assert!(text.contains("duplex_gap_messages_total 1"), "{text}");
}

async fn a_qos0_push_its_node_cannot_take_is_dropped_and_a_full_queue_counts_once(kind: StoreKind) {
    // The first delivery to an access node fails, as for a full outbound queue.
    let node = start_with(kind, |c| c.queue_max_messages = 1, 1).await;
    let mut conn = node.connect("d", "d1", 0).await;
    let (status, body) = node
        .post("/v1/push", &json!({"client_ids": ["d1"], "payload": 1, "qos": 0}))
        .await;
    assert_eq!(
        (status, body["messages"][0]["state"].clone()),
        (202, json!("dropped")),
        "{body}"
    );
    node.post("/v1/push", &json!({"client_ids": ["d1"], "payload": 2, "qos": 0}))
        .await;
    assert_eq!(
        json_payload(&recv_push(&mut conn).await),
        json!(2),
        "the next one arrives"
    );

    node.push_to("q1", json!(1)).await;
    let (status, _) = node
        .post("/v1/push", &json!({"client_ids": ["q1"], "payload": 2}))
        .await;
    assert_eq!(status, 429);
    let batch = json!({"pushes": [{"client_ids": ["q1"], "payload": 3}]});
    assert_eq!(node.post("/v1/push/batch", &batch).await.0, 202);
    let refused = node
        .metrics
        .counter("duplex_pushes_rejected_total", &[("code", "queue_full")]);
    assert_eq!(refused.get(), 2, "one refusal each, alone or in a batch");
}

/// A client that processed seqs up to 50 elsewhere (its store entry lost)
/// connects; a push sent right after `connected` gets a seq above 50, so the
/// client does not drop it as already processed.
async fn a_push_racing_a_resuming_connect_gets_a_seq_above_its_last_seq(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    for round in 0..5u64 {
        let client = format!("racer-{round}");
        let mut conn = node.connect("r", &client, 50).await;
        let (status, body) = node
            .post("/v1/push", &json!({"client_ids": [client], "payload": round}))
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["messages"][0]["seq"], 51, "{body}");
        assert_eq!(recv_push(&mut conn).await.seq, 51);
    }
}

/// API.md: an expired message is reported with a `gap` "before the next
/// message it gets", also on a live connection: a stored message whose
/// delivery never came expires, and the next push arrives after the gap.
async fn a_connected_client_hears_of_an_expired_message_before_the_next_one(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut conn = node.connect("g", "live-gap", 0).await;
    // Stored without a delivery (as if its downstream node died), expiring at once.
    let now = duplex_store::now_ms();
    let limits = duplex_store::QueueLimits {
        max_messages: 10,
        max_bytes: 1 << 20,
    };
    let lost = duplex_testkit::message(b"lost", now, now + 50);
    node.store
        .enqueue("live-gap", &lost, limits, now)
        .await
        .expect("enqueue");
    eventually("the message expired", || async {
        node.get("/v1/clients/live-gap").await.1["pending"] == 0
    })
    .await;
    node.push_to("live-gap", json!("next")).await;
    match recv(&mut conn).await {
        Some(Frame::Gap(g)) => assert_eq!((g.from, g.to, g.reason.as_str()), (1, 1, "expired")),
        other => panic!("expected the gap first, got {other:?}"),
    }
    let next = recv_push(&mut conn).await;
    assert_eq!((next.seq, json_payload(&next)), (2, json!("next")));
}

async fn batch_wait_ack_and_kick(kind: StoreKind) {
    let node = std::sync::Arc::new(start(kind, |_| {}).await);
    let mut conn = node.connect("k", "k1", 0).await;
    let batch = json!({"pushes": [{"client_ids": ["k1"], "payload": 1}, {"client_ids": ["k1"], "payload": 2}]});
    let (status, body) = node.post("/v1/push/batch", &batch).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["results"].as_array().expect("results").len(), 2);
    let a = recv_push(&mut conn).await;
    let b = recv_push(&mut conn).await;
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(!a.ack_now && !b.ack_now, "nobody waits for these acks");
    // wait_ack_ms: the call returns once the client acked; the push asks the
    // client to ack at once (clients otherwise hold acks for a moment).
    let waiter = {
        let node = node.clone();
        tokio::spawn(async move {
            node.post(
                "/v1/push",
                &json!({"client_ids": ["k1"], "payload": 3, "wait_ack_ms": 5000}),
            )
            .await
        })
    };
    let third = recv_push(&mut conn).await;
    assert!(third.ack_now, "a backend call waits for this ack");
    ack(&mut conn, third.seq).await;
    let (status, body) = waiter.await.expect("waiter");
    assert_eq!(
        (status, body["messages"][0]["acked"].clone()),
        (202, json!(true)),
        "{body}"
    );
    let (status, _) = node
        .post(
            "/v1/push",
            &json!({"client_ids": ["nobody"], "payload": 1, "wait_ack_ms": 50}),
        )
        .await;
    assert_eq!(status, 202);
    let (status, body) = node.delete("/v1/clients/k1").await;
    assert_eq!((status, body["kicked"].clone()), (200, json!(true)));
    match recv(&mut conn).await {
        Some(Frame::Kicked(k)) => assert_eq!(k.reason, "admin"),
        other => panic!("expected kicked, got {other:?}"),
    }
    eventually("offline after kick", || async {
        node.get("/v1/clients/k1").await.1["online"] == false
    })
    .await;
    assert_eq!(node.delete("/v1/clients/k1").await.0, 404);
}

async fn a_failed_delivery_stays_stored_and_is_retried(kind: StoreKind) {
    // The first three deliveries fail as if the access node were unreachable.
    let node = start_with(kind, |_| {}, 3).await;
    let mut conn = node.connect("l", "l1", 0).await;
    let item = node.push_to("l1", json!("retry me")).await;
    assert_eq!(item["state"], "queued", "{item}");
    let push = recv_push(&mut conn).await;
    assert_eq!((push.seq, json_payload(&push)), (1, json!("retry me")));
    let id = push.msg_id.clone();
    eventually("status sent", || async {
        node.get(&format!("/v1/messages/{id}")).await.1["state"] == "sent"
    })
    .await;
}

async fn a_pushers_traceparent_reaches_the_client(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut conn = node.connect("alice", "phone-1", 0).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let resp = node
        .http
        .post(format!("{}/v1/push", node.api))
        .bearer_auth(API_KEY)
        .header("traceparent", parent)
        .json(&json!({"client_ids": ["phone-1"], "payload": 1}))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 202);
    let push = recv_push(&mut conn).await;
    let tp = push.headers.get("traceparent").expect("traceparent header");
    assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"), "{tp}");
    assert_ne!(tp, parent, "a new span of the same trace");
}

/// What a downstream node leaves behind when it dies between storing a
/// message and handing it over: stored, never delivered, client online.
async fn a_delivery_that_never_came_is_pulled_at_the_next_lease_renewal(kind: StoreKind) {
    // Leases of 4 s are renewed every 1.3 s; heartbeats of 2 s keep a silent test client for 6 s.
    let node = start_tuned(kind, |access| {
        access.heartbeat_ms = 2_000;
        access.route_ttl_ms = 4_000;
    })
    .await;
    let mut conn = node.connect("s", "s1", 0).await;
    let limits = duplex_store::QueueLimits {
        max_messages: 100,
        max_bytes: 100_000,
    };
    let now = duplex_store::now_ms();
    for i in 1..=3 {
        let message = duplex_store::NewMessage {
            record: duplex_store::MessageRecord {
                reply_to: None,
                nonce: rand::random(),
                headers: Default::default(),
                payload: serde_json::to_vec(&json!(format!("orphan {i}"))).expect("json").into(),
                created_ms: now,
                expires_ms: now + 60_000,
            },
            idempotency_key: None,
            idempotency_ttl_ms: 0,
            report_expiry: false,
        };
        node.store.enqueue("s1", &message, limits, now).await.expect("stored");
    }
    for seq in 1..=3 {
        let push = recv_push(&mut conn).await;
        assert_eq!((push.seq, json_payload(&push)), (seq, json!(format!("orphan {seq}"))));
    }
    let text = node.metrics.render();
    assert!(text.contains("duplex_lease_catch_ups_total 1"), "{text}");
    // Later deliveries carry on after them, without repeating them.
    node.push_to("s1", json!("next")).await;
    let push = recv_push(&mut conn).await;
    assert_eq!((push.seq, json_payload(&push)), (4, json!("next")));
}

async fn a_json_payload_arrives_as_the_text_it_was_sent_as(kind: StoreKind) {
    let node = start(kind, |_| {}).await;
    let mut conn = node.connect("alice", "exact-1", 0).await;
    // A number beyond 64 bits and a spelling a JSON tree would not keep.
    let payload = r#"{"id":123456789012345678901234567890,"price":1.50}"#;
    let body = format!(r#"{{"client_ids":["exact-1"],"payload":{payload}}}"#);
    let (status, _) = node.post_raw("/v1/push", &body, Some(API_KEY)).await;
    assert_eq!(status, 202);
    assert_eq!(recv_push(&mut conn).await.payload.as_ref(), payload.as_bytes());
}

/// Bursts larger than the connection's outbound queue (three batches of 100
/// at once, queue 4) are written from the store instead: the client is not
/// kicked and gets every message once, in order. (Before, the overflow
/// kicked it as a slow consumer and its reconnect replayed into the next
/// burst: two concurrent batch calls to one client could keep it reconnecting.)
async fn bursts_beyond_the_outbound_queue_are_written_from_the_store_without_a_kick(kind: StoreKind) {
    let node = std::sync::Arc::new(start_tuned(kind, |a| a.outbound_queue = 4).await);
    let mut conn = node.connect("burst", "burst-1", 0).await;
    let deferred = node.metrics.counter("duplex_outbound_deferred_total", &[]);
    let mut seq = 0;
    // Whether a burst outruns the connection is up to the scheduler: a few rounds make it sure.
    for round in 0..5 {
        let batches: Vec<_> = (0..3)
            .map(|b| {
                let node = node.clone();
                tokio::spawn(async move {
                    let pushes: Vec<_> = (0..100)
                        .map(|i| json!({"client_ids": ["burst-1"], "payload": [round, b, i]}))
                        .collect();
                    let (status, body) = node.post("/v1/push/batch", &json!({ "pushes": pushes })).await;
                    assert_eq!(status, 202, "{body}");
                })
            })
            .collect();
        for _ in 0..300 {
            seq += 1;
            match recv(&mut conn).await {
                Some(Frame::Push(p)) => assert_eq!(p.seq, seq, "in order, once each"),
                other => panic!("push {seq}: got {other:?}"),
            }
        }
        for batch in batches {
            batch.await.expect("batch");
        }
        ack(&mut conn, seq).await;
        if deferred.get() > 0 {
            break;
        }
    }
    assert!(
        deferred.get() > 0,
        "a burst overflowed the queue, so the catch-up was covered"
    );
    eventually("every push acked", || async {
        node.get("/v1/clients/burst-1").await.1["last_acked_seq"] == seq
    })
    .await;
    let (_, info) = node.get("/v1/clients/burst-1").await;
    assert_eq!(
        (info["online"].clone(), info["pending"].clone()),
        (json!(true), json!(0))
    );
}

both_stores!(
    bursts_beyond_the_outbound_queue_are_written_from_the_store_without_a_kick,
    a_json_payload_arrives_as_the_text_it_was_sent_as,
    a_delivery_that_never_came_is_pulled_at_the_next_lease_renewal,
    a_pushers_traceparent_reaches_the_client,
    online_push_arrives_and_its_ack_is_recorded,
    offline_push_arrives_after_connect_and_unacked_ones_come_again,
    order_holds_under_eight_concurrent_pushers,
    user_push_reaches_every_client_of_the_user,
    qos0_reaches_online_clients_and_is_never_stored,
    idempotent_retry_stores_once,
    expired_messages_show_as_expired_and_the_client_hears_of_the_gap,
    a_qos0_push_its_node_cannot_take_is_dropped_and_a_full_queue_counts_once,
    a_push_racing_a_resuming_connect_gets_a_seq_above_its_last_seq,
    a_connected_client_hears_of_an_expired_message_before_the_next_one,
    batch_wait_ack_and_kick,
    a_failed_delivery_stays_stored_and_is_retried,
);
