//! Several nodes on one Redis, as real processes: a push posted to one node
//! reaches a client connected to another, kicks and replacements cross nodes.

mod common;

use std::time::Duration;

use common::process::*;
use duplex_client::Connection;
use duplex_shared::protocol::{Ack, Frame};
use duplex_shared::testing::TestRedis;
use serde_json::{json, Value};

async fn next_frame(conn: &mut Connection) -> Option<Frame> {
    tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("a frame within 5 s")
        .expect("readable")
}

#[tokio::test]
async fn pushes_kicks_and_replacements_cross_nodes() {
    let redis = TestRedis::start().expect("redis-server");
    let a = start(&["--redis", &redis.url(), "--node-id", "node-a"]);
    let b = start(&["--redis", &redis.url(), "--node-id", "node-b"]);
    let http = reqwest::Client::new();
    let mut conn = Connection::tcp(a.tcp).await.expect("tcp");
    conn.handshake(&mint("zoe"), "zoe-phone", 0).await.expect("handshake");

    // Posted to node B, delivered live by node A.
    let resp: Value = http
        .post(format!("http://{}/v1/push", b.push))
        .bearer_auth("duplex-dev-api-key")
        .json(&json!({"client_ids": ["zoe-phone"], "payload": {"hi": 1}}))
        .send()
        .await
        .expect("push")
        .json()
        .await
        .expect("json");
    assert_eq!(resp["messages"][0]["state"], "delivered_to_node", "{resp}");
    let push = match next_frame(&mut conn).await {
        Some(Frame::Push(p)) => p,
        other => panic!("expected the push, got {other:?}"),
    };
    conn.send(&Frame::Ack(Ack { id: 1, seq: push.seq })).await.expect("ack");
    let client: Value = http
        .get(format!("http://{}/v1/clients/zoe-phone", b.push))
        .bearer_auth("duplex-dev-api-key")
        .send()
        .await
        .expect("client")
        .json()
        .await
        .expect("json");
    assert_eq!(client["node_id"], "node-a", "{client}");
    assert!(
        client["connected_since"].as_u64().is_some(),
        "asked across nodes: {client}"
    );

    // A kick through node B closes the connection on node A.
    let kicked = http
        .delete(format!("http://{}/v1/clients/zoe-phone", b.push))
        .bearer_auth("duplex-dev-api-key")
        .send()
        .await
        .expect("kick");
    assert_eq!(kicked.status(), 200);
    assert!(matches!(next_frame(&mut conn).await, Some(Frame::Kicked(k)) if k.reason == "admin"));

    // The same client logging in on node B replaces its connection on node A at once.
    let mut first = Connection::tcp(a.tcp).await.expect("tcp");
    first.handshake(&mint("zoe"), "zoe-phone", 0).await.expect("handshake");
    let mut second = Connection::tcp(b.tcp).await.expect("tcp");
    second.handshake(&mint("zoe"), "zoe-phone", 0).await.expect("handshake");
    assert!(matches!(next_frame(&mut first).await, Some(Frame::Kicked(k)) if k.reason == "replaced"));

    // And a push through node A now reaches the client on node B.
    let resp = http
        .post(format!("http://{}/v1/push", a.push))
        .bearer_auth("duplex-dev-api-key")
        .json(&json!({"client_ids": ["zoe-phone"], "payload": 2}))
        .send()
        .await
        .expect("push");
    assert_eq!(resp.status(), 202);
    assert!(matches!(next_frame(&mut second).await, Some(Frame::Push(p)) if p.seq == push.seq + 1));
}

#[tokio::test]
async fn a_killed_node_loses_nothing_that_was_accepted() {
    use duplex_client::{Client, ClientOptions, Endpoint, Event};
    let redis = TestRedis::start().expect("redis-server");
    let mut a = start(&["--redis", &redis.url(), "--node-id", "node-a"]);
    let b = start(&["--redis", &redis.url(), "--node-id", "node-b"]);
    let token = mint("max");
    let mut options = ClientOptions::new(
        vec![Endpoint::Tcp(a.tcp), Endpoint::Tcp(b.tcp)],
        "max-phone",
        std::sync::Arc::new(move || token.clone()),
    );
    options.backoff_min = Duration::from_millis(20);
    options.backoff_max = Duration::from_millis(200);
    let mut client = Client::start(options);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("event")
        {
            Some(Event::Connected { node_id, .. }) => {
                assert_eq!(node_id, "node-a");
                break;
            }
            Some(_) => continue,
            None => panic!("client stopped"),
        }
    }

    // 1,000 qos-1 pushes through node B; node A is SIGKILLed after the 300th is accepted.
    let push_api = b.push;
    let pusher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut accepted = Vec::new();
        for n in 0..1_000u32 {
            let resp = http
                .post(format!("http://{push_api}/v1/push"))
                .bearer_auth("duplex-dev-api-key")
                .json(&json!({"client_ids": ["max-phone"], "payload": n}))
                .send()
                .await
                .expect("push");
            assert_eq!(resp.status(), 202, "node B accepts while node A dies");
            let v: Value = resp.json().await.expect("json");
            accepted.push((v["messages"][0]["seq"].as_u64().expect("seq"), n));
        }
        accepted
    });
    let mut received: Vec<(u64, u32)> = Vec::new();
    let mut killed = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while received.len() < 1_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of 1000 arrived",
            received.len()
        );
        let event = tokio::time::timeout(Duration::from_secs(20), client.next())
            .await
            .expect("an event within 20 s")
            .expect("client running");
        if let Event::Push(p) = event {
            let n: u32 = serde_json::from_slice(&p.payload).expect("payload");
            received.push((p.seq, n));
            if received.len() == 300 && !killed {
                a.child.kill().expect("SIGKILL node A");
                let _ = a.child.wait();
                killed = true;
            }
        }
    }
    let accepted = pusher.await.expect("pusher");
    assert!(killed);
    assert!(
        received.windows(2).all(|w| w[0].0 < w[1].0),
        "the app saw every push once, in seq order"
    );
    let mut sent = accepted.clone();
    sent.sort();
    assert_eq!(received, sent, "every accepted push arrived, with its own seq");
    assert_eq!(received.len(), 1_000);
}

#[tokio::test]
async fn draining_a_node_with_1000_clients_moves_them_all_and_loses_nothing() {
    use duplex_client::{Client, ClientOptions, Endpoint, Event};
    const CLIENTS: usize = 1_000;
    let redis = TestRedis::start().expect("redis-server");
    let env = [("DUPLEX_ACCESS__GOAWAY_WINDOW_MS", "1000")];
    let mut a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &env);
    let b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &env);
    let token = mint("crowd");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, &'static str, Option<u32>)>(4 * CLIENTS);
    for i in 0..CLIENTS {
        let token = token.clone();
        let mut options = ClientOptions::new(
            vec![Endpoint::Tcp(a.tcp), Endpoint::Tcp(b.tcp)],
            format!("crowd-{i}"),
            std::sync::Arc::new(move || token.clone()),
        );
        options.backoff_min = Duration::from_millis(50);
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut client = Client::start(options);
            while let Some(event) = client.next().await {
                let report = match event {
                    Event::Connected { node_id, .. } if node_id == "node-a" => (i, "on-a", None),
                    Event::Connected { .. } => (i, "on-b", None),
                    Event::Push(p) => (i, "push", serde_json::from_slice(&p.payload).ok()),
                    _ => continue,
                };
                if tx.send(report).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut on_a = 0;
    while on_a < CLIENTS {
        let (_, what, _) = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("clients connect")
            .expect("open");
        on_a += usize::from(what == "on-a");
    }
    // One push per client through node B, accepted before and while node A drains.
    let push_api = b.push;
    let pusher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        for i in 0..CLIENTS {
            let resp = http
                .post(format!("http://{push_api}/v1/push"))
                .bearer_auth("duplex-dev-api-key")
                .json(&json!({"client_ids": [format!("crowd-{i}")], "payload": i}))
                .send()
                .await
                .expect("push");
            assert_eq!(resp.status(), 202);
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(terminate(&mut a).await.success(), "node A drains and exits cleanly");
    pusher.await.expect("pusher");
    let (mut moved, mut pushes) = (vec![false; CLIENTS], vec![0u32; CLIENTS]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while moved.contains(&false) || pushes.contains(&0) {
        assert!(tokio::time::Instant::now() < deadline, "not everything arrived in time");
        let (i, what, payload) = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("progress")
            .expect("open");
        match what {
            "on-b" => moved[i] = true,
            "push" => {
                assert_eq!(payload, Some(i as u32), "each client gets its own push");
                pushes[i] += 1;
            }
            _ => {}
        }
    }
    assert!(
        pushes.iter().all(|&n| n == 1),
        "every push arrived exactly once at its app"
    );
}
