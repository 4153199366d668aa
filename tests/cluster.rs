//! Several nodes on one Redis, as real processes: a push posted to one node
//! reaches a client connected to another, kicks and replacements cross nodes.

mod common;

use common::process::*;
use common::scenarios;
use duplex_client::Connection;
use duplex_shared::protocol::Frame;
use duplex_testkit::{TestRedis, TestRedisCluster};
use serde_json::json;

#[tokio::test]
async fn pushes_kicks_and_replacements_cross_nodes() {
    let redis = TestRedis::start().expect("redis-server");
    pushes_kicks_and_replacements_cross_nodes_on(&redis.url()).await;
}

#[tokio::test]
async fn pushes_kicks_and_replacements_cross_nodes_on_a_redis_cluster() {
    let cluster = TestRedisCluster::start().expect("redis cluster");
    pushes_kicks_and_replacements_cross_nodes_on(&cluster.url()).await;
}

#[tokio::test]
async fn a_killed_node_loses_nothing_on_a_redis_cluster() {
    let cluster = TestRedisCluster::start().expect("redis cluster");
    let mut a = start(&["--redis", &cluster.url(), "--node-id", "node-a"]);
    let b = start(&["--redis", &cluster.url(), "--node-id", "node-b"]);
    let a_tcp = a.tcp;
    scenarios::kill_during_a_push_stream(a_tcp, b.tcp, "node-a", b.push, move || {
        a.child.kill().expect("SIGKILL node A");
        let _ = a.child.wait();
    })
    .await;
}

async fn pushes_kicks_and_replacements_cross_nodes_on(redis_url: &str) {
    let a = start(&["--redis", redis_url, "--node-id", "node-a"]);
    let b = start(&["--redis", redis_url, "--node-id", "node-b"]);
    let http = reqwest::Client::new();
    let mut conn = Connection::tcp(a.tcp).await.expect("tcp");
    conn.handshake(&mint("zoe"), "zoe-phone", 0).await.expect("handshake");

    // Posted to node B, delivered live by node A.
    let push = push_arrives_live(b.push, "zoe-phone", &mut conn).await;
    let client = call_json(
        &http,
        reqwest::Method::GET,
        format!("http://{}/v1/clients/zoe-phone", b.push),
        Some("duplex-dev-api-key"),
    )
    .await
    .1;
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
async fn draining_a_node_with_1000_clients_moves_them_all_and_loses_nothing() {
    let redis = TestRedis::start().expect("redis-server");
    // The 1000 "devices" all connect at once from the test's one address.
    let env = [
        ("DUPLEX_ACCESS__GOAWAY_WINDOW_MS", "1000"),
        ("DUPLEX_ACCESS__MAX_UNAUTHENTICATED_PER_SOURCE", "1024"),
    ];
    let mut a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &env);
    let b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &env);
    let a_tcp = a.tcp;
    scenarios::drain_with_1000_clients(a_tcp, b.tcp, "node-a", b.push, terminate(&mut a)).await;
}

#[tokio::test]
async fn a_killed_nodes_clients_show_offline_once_its_registry_lease_lapses() {
    let redis = TestRedis::start().expect("redis-server");
    // A short registry lease; routes keep their own (longer) lease.
    let env = [("DUPLEX_REGISTRY__LEASE_MS", "1000")];
    let mut a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &env);
    let b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &env);
    let http = reqwest::Client::new();
    let mut conn = Connection::tcp(a.tcp).await.expect("tcp");
    conn.handshake(&mint("ivy"), "ivy-phone", 0).await.expect("handshake");
    let url = format!("http://{}/v1/clients/ivy-phone", b.push);
    let info = call_json(&http, reqwest::Method::GET, url.clone(), Some("duplex-dev-api-key"))
        .await
        .1;
    assert_eq!(
        (info["online"].clone(), info["node_id"].clone()),
        (json!(true), json!("node-a")),
        "{info}"
    );

    a.child.kill().expect("SIGKILL node A");
    let _ = a.child.wait();
    let started = std::time::Instant::now();
    let mut offline = false;
    for _ in 0..100 {
        let info = call_json(&http, reqwest::Method::GET, url.clone(), Some("duplex-dev-api-key"))
            .await
            .1;
        if info["online"] == json!(false) {
            assert_eq!(info["node_id"], serde_json::Value::Null, "{info}");
            offline = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(offline, "still online 5 s after its node died");
    // The route lease (90 s) has not ended yet: the registry told.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    drop(conn);
}

/// The liveness rule: SDK clients on a node that hangs (SIGSTOP) notice the
/// missing pong within the advertised deadline, move to the other node and
/// receive new pushes there, long before the hung node comes back.
#[tokio::test]
async fn sdk_clients_leave_a_hung_node_within_the_pong_deadline() {
    use duplex_client::{Client, ClientOptions, Endpoint, Event};
    let redis = TestRedis::start().expect("redis-server");
    let env = [
        ("DUPLEX_ACCESS__HEARTBEAT_MS", "500"),
        ("DUPLEX_ACCESS__PONG_DEADLINE_MS", "1000"),
        ("DUPLEX_REGISTRY__LEASE_MS", "1000"),
    ];
    let a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &env);
    let b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &env);
    let mut clients = Vec::new();
    for i in 0..3 {
        let token = mint("liv");
        let mut options = ClientOptions::new(
            vec![Endpoint::Tcp(a.tcp), Endpoint::Tcp(b.tcp)],
            format!("liv-{i}"),
            std::sync::Arc::new(move || token.clone()),
        );
        options.backoff_min = std::time::Duration::from_millis(20);
        options.backoff_max = std::time::Duration::from_millis(200);
        options.connect_timeout = std::time::Duration::from_secs(1);
        clients.push(Client::start(options));
    }
    let connected_to = |event: Option<Event>| match event {
        Some(Event::Connected { node_id, .. }) => Some(node_id),
        _ => None,
    };
    for client in &mut clients {
        loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), client.next())
                .await
                .expect("an event");
            if let Some(node) = connected_to(event) {
                assert_eq!(node, "node-a");
                break;
            }
        }
    }
    let pid = a.child.id().to_string();
    let signal = |sig: &str| {
        let done = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(done.success());
    };
    signal("-STOP");
    let stopped = std::time::Instant::now();
    let http = reqwest::Client::new();
    for (i, client) in clients.iter_mut().enumerate() {
        loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), client.next())
                .await
                .expect("an event within 10 s of the node hanging");
            if let Some(node) = connected_to(event) {
                assert_eq!(node, "node-b");
                break;
            }
        }
        let push = json!({"client_ids": [format!("liv-{i}")], "payload": "after the hang"});
        let resp = http
            .post(format!("http://{}/v1/push", b.push))
            .bearer_auth("duplex-dev-api-key")
            .json(&push)
            .send()
            .await
            .expect("push");
        assert_eq!(resp.status(), 202);
        loop {
            let event = tokio::time::timeout(std::time::Duration::from_secs(10), client.next())
                .await
                .expect("the push within 10 s");
            if let Some(Event::Push(p)) = event {
                assert_eq!(p.payload.as_ref(), b"\"after the hang\"");
                break;
            }
        }
    }
    // heartbeat (0.5 s) + pong deadline (1 s) + reconnect backoff, with room for a slow machine.
    let moved_after = stopped.elapsed();
    signal("-CONT");
    assert!(moved_after < std::time::Duration::from_secs(8), "{moved_after:?}");
}
