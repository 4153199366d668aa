//! Lifecycle events through the binary: signed webhook batches (retried on
//! 5xx with the same batch id) carrying connected, acked, disconnected, gap
//! and expired events; expired events once each from two downstream nodes
//! sharing Redis; a dead webhook costs counted events, not client latency;
//! events to a queue sink.

mod common;

use std::time::Duration;

use common::backend::{Backend, Mode};
use common::process::*;
use duplex_brokers::config::RedisSourceConfig;
use duplex_brokers::{connect_source, SourceConfig};
use duplex_client::Connection;
use duplex_shared::protocol::{Ack, Frame};
use duplex_testkit::{eventually, TestRedis};
use serde_json::{json, Value};

const SECRET: &str = "webhook-secret-for-the-test";

fn events_of(hits: &[common::backend::Hit]) -> Vec<Value> {
    hits.iter()
        .filter_map(|h| serde_json::from_slice::<Value>(&h.body).ok())
        .flat_map(|b| b["events"].as_array().cloned().unwrap_or_default())
        .collect()
}

fn find<'a>(events: &'a [Value], kind: &str, client: &str) -> Option<&'a Value> {
    events.iter().find(|e| e["type"] == kind && e["client_id"] == client)
}

async fn metrics(admin: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{admin}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

#[tokio::test]
async fn a_signed_webhook_gets_connected_acked_disconnected_and_gap_events() {
    let backend = Backend::start().await;
    // The first batch meets a failing backend and must come again.
    backend.set(Mode::Status(503));
    let config = config_file(&format!(
        "[events]\nbatch_wait_ms = 20\n\n[events.webhook]\nurl = \"{}/duplex/events\"\nsecret = \"{SECRET}\"\nretry_min_ms = 20\nretry_max_ms = 100\n",
        backend.url()
    ));
    let run = start(&["--config", &config.path]);

    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    eventually("the first batch was refused", || {
        let refused = backend.count() >= 1;
        async move { refused }
    })
    .await;
    backend.set(Mode::Ok);
    let push = push_arrives_live(run.push, "phone-1", &mut conn).await;
    conn.send(&Frame::Ack(Ack { id: 7, seq: push.seq })).await.expect("ack");
    ping_pong(&mut conn).await;
    drop(conn);

    // A message that expires while its client is away becomes a gap.
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("duplex-dev-api-key")
        .json(&json!({"client_ids": ["phone-2"], "payload": 1, "ttl": 1}))
        .send()
        .await
        .expect("push");
    assert_eq!(answer.status(), 202);
    let lapsed: Value = answer.json().await.expect("json");
    let lapsed_id = lapsed["messages"][0]["message_id"]
        .as_str()
        .expect("message id")
        .to_owned();
    // The TTL is wall-clock time in the store; nothing else can make it pass.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The gap shows once a later message is read past the expired one.
    push_hi(run.push, "phone-2").await;
    let mut late = Connection::tcp(run.tcp).await.expect("tcp");
    late.handshake(&mint("bob"), "phone-2", 0).await.expect("handshake");
    match next_frame(&mut late).await {
        Some(Frame::Gap(g)) => assert_eq!((g.from, g.to), (1, 1)),
        other => panic!("expected a gap, got {other:?}"),
    }

    eventually("every event arrived", || {
        let events = events_of(&backend.hits());
        let all = ["connected", "acked", "disconnected"]
            .iter()
            .all(|k| find(&events, k, "phone-1").is_some())
            && find(&events, "gap", "phone-2").is_some()
            && find(&events, "expired", "phone-2").is_some();
        async move { all }
    })
    .await;
    let hits = backend.hits();
    let events = events_of(&hits);
    let connected = find(&events, "connected", "phone-1").expect("connected");
    assert_eq!(connected["user_id"], "alice");
    assert_eq!(connected["transport"], "tcp");
    assert!(connected["node_id"].as_str().is_some_and(|n| !n.is_empty()));
    let acked = find(&events, "acked", "phone-1").expect("acked");
    assert_eq!(
        (acked["up_to_seq"].as_u64(), acked["messages"].as_u64()),
        (Some(push.seq), Some(1))
    );
    let gone = find(&events, "disconnected", "phone-1").expect("disconnected");
    assert_eq!(gone["reason"], "client_left");
    assert!(gone["duration_ms"].as_u64().is_some());
    let gap = find(&events, "gap", "phone-2").expect("gap");
    assert_eq!(
        (gap["from_seq"].as_u64(), gap["to_seq"].as_u64(), gap["reason"].as_str()),
        (Some(1), Some(1), Some("expired"))
    );
    // The message that lapsed is named, though the client's read removed it before any scan.
    let expired = find(&events, "expired", "phone-2").expect("expired");
    assert_eq!(
        (expired["message_id"].as_str(), expired["seq"].as_u64()),
        (Some(lapsed_id.as_str()), Some(1))
    );
    assert_eq!(
        expired["expires_ms"]
            .as_u64()
            .zip(expired["created_ms"].as_u64())
            .map(|(e, c)| e - c),
        Some(1_000)
    );
    // Refused at least once (the backend answered 503 until the test switched it), then taken.
    let copies = events
        .iter()
        .filter(|e| e["type"] == "connected" && e["client_id"] == "phone-1")
        .count();
    assert!(copies >= 2, "the refused batch came again: {copies}");

    // Every call is signed over its exact body; a retry keeps its batch id.
    let mut batch_ids = Vec::new();
    for hit in &hits {
        assert_eq!(hit.target, "/duplex/events");
        let header = hit.headers.get("x-duplex-signature").expect("signed");
        let t: u64 = header
            .strip_prefix("t=")
            .and_then(|r| r.split(',').next())
            .and_then(|t| t.parse().ok())
            .expect("t=");
        assert_eq!(header, &duplex_events::signature(SECRET.as_bytes(), t, &hit.body));
        let body: Value = serde_json::from_slice(&hit.body).expect("json");
        batch_ids.push(body["batch_id"].as_str().expect("batch id").to_owned());
    }
    assert_eq!(
        batch_ids[0], batch_ids[1],
        "the retry of the refused batch has its batch id"
    );
    let text = metrics(run.admin).await;
    assert!(
        text.contains("duplex_event_retries_total{destination=\"webhook\"} "),
        "{text}"
    );
}

#[tokio::test]
async fn a_dead_webhook_costs_counted_events_not_client_latency() {
    // Accepts connections and never answers.
    let hole = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let hole_addr = hole.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((s, _)) = hole.accept().await {
            open.push(s);
        }
    });
    let config = config_file(&format!(
        "[events]\nbuffer = 4\nbatch_max = 1\nbatch_wait_ms = 0\n\n[events.webhook]\nurl = \"http://{hole_addr}/\"\nsecret = \"{SECRET}\"\ntimeout_ms = 60000\n"
    ));
    let run = start(&["--config", &config.path]);
    for i in 0..40 {
        let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
        tokio::time::timeout(
            Duration::from_secs(5),
            conn.handshake(&mint("carol"), &format!("c-{i}"), 0),
        )
        .await
        .expect("the handshake is not held up by the webhook")
        .expect("handshake");
        ping_pong(&mut conn).await;
    }
    let text = metrics(run.admin).await;
    let dropped: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("duplex_events_dropped_total{reason=\"buffer_full\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    // 80 events (40 connects, 40 disconnects) against a buffer of 4 and one stuck call.
    assert!(dropped >= 40, "dropped {dropped}:\n{text}");
    held.abort();
}

#[tokio::test]
async fn events_go_to_a_queue_sink_too() {
    let redis = TestRedis::start().expect("redis-server");
    let config = config_file(&format!(
        "[events]\nbatch_wait_ms = 20\nkinds = [\"connected\"]\nsink = {{ kind = \"redis\", url = \"{}\", stream = \"duplex:events\" }}\n",
        redis.url()
    ));
    let run = start(&["--config", &config.path]);
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("dave"), "phone-9", 0).await.expect("handshake");
    drop(conn);
    let mut source = connect_source(
        &SourceConfig::Redis(RedisSourceConfig {
            ca_file: None,
            name: "reader".into(),
            url: redis.url(),
            stream: "duplex:events".into(),
            group: "reader".into(),
            dead_letter_stream: "duplex:events:dead".into(),
            dead_letter_max_len: 10,
            claim_idle_ms: 30_000,
            max_in_flight: 16,
        }),
        "reader",
    )
    .await
    .expect("reader");
    let message = tokio::time::timeout(Duration::from_secs(10), source.next())
        .await
        .expect("a batch within 10 s")
        .expect("readable");
    let body: Value = serde_json::from_slice(&message.body).expect("json");
    let events = body["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "only the configured kind: {body}");
    assert_eq!(
        (events[0]["type"].as_str(), events[0]["client_id"].as_str()),
        (Some("connected"), Some("phone-9"))
    );
    drop(run);
}

/// Split mode on Redis: two downstream nodes scan the same store, and every
/// message that lapsed for an absent client is reported once, by one of them.
#[tokio::test]
async fn expired_events_come_once_from_downstream_nodes_sharing_redis() {
    let redis = TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    let config = config_file(&format!(
        "[events]\nkinds = [\"expired\"]\nbatch_wait_ms = 20\n\n[events.webhook]\nurl = \"{}/duplex/events\"\nsecret = \"{SECRET}\"\n",
        backend.url()
    ));
    let node = |id: &str| {
        start_tier(
            "downstream",
            &["--redis", &redis.url(), "--node-id", id, "--config", &config.path],
        )
    };
    let (one, two) = (node("down-1"), node("down-2"));
    let http = reqwest::Client::new();
    let mut lapsed = std::collections::HashSet::new();
    for (i, node) in [&one, &two, &one, &two, &one, &two].iter().enumerate() {
        let answer: Value = http
            .post(format!("http://{}/v1/push", node.push.expect("push API")))
            .bearer_auth("duplex-dev-api-key")
            .json(&json!({"client_ids": [format!("away-{}", i % 3)], "payload": i, "ttl": 1}))
            .send()
            .await
            .expect("push")
            .json()
            .await
            .expect("json");
        lapsed.insert(answer["messages"][0]["message_id"].as_str().expect("id").to_owned());
    }
    let kept: Value = http
        .post(format!("http://{}/v1/push", one.push.expect("push API")))
        .bearer_auth("duplex-dev-api-key")
        .json(&json!({"client_ids": ["away-0"], "payload": "kept", "ttl": 600}))
        .send()
        .await
        .expect("push")
        .json()
        .await
        .expect("json");
    eventually("every lapsed message was reported", || {
        let reported = events_of(&backend.hits()).len();
        async move { reported >= 6 }
    })
    .await;
    // Two more scans of each node: nothing else comes.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let events = events_of(&backend.hits());
    let ids: Vec<&str> = events.iter().filter_map(|e| e["message_id"].as_str()).collect();
    assert_eq!(ids.len(), 6, "once each: {events:?}");
    let ids: std::collections::HashSet<String> = ids.into_iter().map(str::to_owned).collect();
    assert_eq!(ids, lapsed);
    assert!(!ids.contains(kept["messages"][0]["message_id"].as_str().expect("id")));
    assert!(events.iter().all(|e| e["type"] == "expired"));
    let nodes: std::collections::HashSet<&str> = events.iter().filter_map(|e| e["node_id"].as_str()).collect();
    assert!(nodes.iter().all(|n| ["down-1", "down-2"].contains(n)), "{nodes:?}");
}
