//! Failure scenarios shared by the all-in-one and the split-mode cluster
//! tests: the same guarantees, whatever runs the tiers.

use std::net::SocketAddr;
use std::time::Duration;

use duplex_client::{Client, ClientOptions, Endpoint, Event};
use serde_json::{json, Value};

use super::process::mint;

/// A client on node A (`a_tcp`, which may fall back to `b_tcp`) while 1,000
/// qos-1 pushes are posted to `push_api`; `kill_a` is the fault injected
/// after the 300th arrived (SIGKILL or SIGSTOP of node A, a Redis restart).
/// Every accepted push must reach the app once, with its own seq, in order.
pub async fn kill_during_a_push_stream(
    a_tcp: SocketAddr,
    b_tcp: SocketAddr,
    a_node_id: &str,
    push_api: SocketAddr,
    kill_a: impl FnOnce(),
) {
    let mut kill_a = Some(kill_a);
    let token = mint("max");
    let mut options = ClientOptions::new(
        vec![Endpoint::Tcp(a_tcp), Endpoint::Tcp(b_tcp)],
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
                assert_eq!(node_id, a_node_id);
                break;
            }
            Some(_) => continue,
            None => panic!("client stopped"),
        }
    }

    // 1,000 qos-1 pushes through `push_api`; node A is SIGKILLed after the 300th arrived.
    let pusher = tokio::spawn(async move {
        let http = reqwest::Client::new();
        let mut accepted = Vec::new();
        for n in 0..1_000u32 {
            // A 503 (the store restarting) is retried with the same key, as
            // backends do: the push is stored once either way.
            let push = json!({"client_ids": ["max-phone"], "payload": n, "idempotency_key": format!("n{n}")});
            let mut answer = None;
            for _ in 0..400 {
                let resp = http
                    .post(format!("http://{push_api}/v1/push"))
                    .bearer_auth("duplex-dev-api-key")
                    .json(&push)
                    .send()
                    .await
                    .expect("push");
                match resp.status().as_u16() {
                    202 => {
                        answer = Some(resp.json::<Value>().await.expect("json"));
                        break;
                    }
                    503 => tokio::time::sleep(Duration::from_millis(50)).await,
                    other => panic!("push {n} answered {other}"),
                }
            }
            let v = answer.unwrap_or_else(|| panic!("push {n} was never accepted"));
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
                kill_a.take().expect("killed once")();
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

/// 1,000 SDK clients on node A (falling back to `b_tcp`); one push per
/// client is posted to `push_api` while `drain_a` (SIGTERM) runs: every client
/// moves and gets its push exactly once.
pub async fn drain_with_1000_clients(
    a_tcp: SocketAddr,
    b_tcp: SocketAddr,
    a_node_id: &str,
    push_api: SocketAddr,
    drain_a: impl std::future::Future<Output = std::process::ExitStatus>,
) {
    const CLIENTS: usize = 1_000;
    let token = mint("crowd");
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, &'static str, Option<u32>)>(4 * CLIENTS);
    for i in 0..CLIENTS {
        let token = token.clone();
        let mut options = ClientOptions::new(
            vec![Endpoint::Tcp(a_tcp), Endpoint::Tcp(b_tcp)],
            format!("crowd-{i}"),
            std::sync::Arc::new(move || token.clone()),
        );
        options.backoff_min = Duration::from_millis(50);
        let tx = tx.clone();
        let a_id = a_node_id.to_owned();
        tokio::spawn(async move {
            let mut client = Client::start(options);
            while let Some(event) = client.next().await {
                let report = match event {
                    Event::Connected { node_id, .. } if node_id == a_id => (i, "on-a", None),
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
    // One push per client through `push_api`, accepted before and while node A drains.
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
    assert!(drain_a.await.success(), "node A drains and exits cleanly");
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
