//! The node registry with real processes on one Redis: `GET /v1/nodes` lists
//! the access nodes, a drained node leaves at once, a node that dies leaves
//! within its lease, and readiness follows the lease.

mod common;

use std::time::Duration;

use common::process::*;
use duplex_testkit::TestRedis;
use serde_json::Value;

/// Node ids in a `{"nodes": [...]}` answer.
fn ids(v: &Value) -> Vec<String> {
    v["nodes"]
        .as_array()
        .expect("array")
        .iter()
        .map(|n| n["node_id"].as_str().expect("id").to_owned())
        .collect()
}

async fn get(http: &reqwest::Client, url: String) -> Value {
    call_json(http, reqwest::Method::GET, url, None).await.1
}

async fn listed(http: &reqwest::Client, push: std::net::SocketAddr) -> Vec<String> {
    ids(&get(http, format!("http://{push}/v1/nodes")).await)
}

async fn until_listed(http: &reqwest::Client, push: std::net::SocketAddr, want: &[&str]) {
    let mut got = Vec::new();
    for _ in 0..200 {
        got = listed(http, push).await;
        if got == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("/v1/nodes stayed {got:?}, wanted {want:?}");
}

#[tokio::test]
async fn nodes_are_listed_while_alive_and_leave_on_drain_or_death() {
    let redis = TestRedis::start().expect("redis-server");
    let env = [
        ("DUPLEX_REGISTRY__LEASE_MS", "900"),
        ("DUPLEX_REGISTRY__REGION", "eu-1"),
    ];
    let a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &env);
    let mut b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &env);
    let mut c = start_with_env(&["--redis", &redis.url(), "--node-id", "node-c"], &env);
    let http = reqwest::Client::new();
    until_listed(&http, a.push, &["node-a", "node-b", "node-c"]).await;
    let v = get(&http, format!("http://{}/v1/nodes", a.push)).await;
    let first = &v["nodes"][0];
    assert_eq!(first["tcp"], a.tcp.to_string(), "{v}");
    assert_eq!(first["ws"], format!("ws://{}/", a.ws));
    assert_eq!(
        (first["region"].clone(), first["weight"].clone()),
        ("eu-1".into(), 100.into())
    );

    // The admin API lists every node of the deployment, this one with its own stats.
    let admin = get(&http, format!("http://{}/admin/v1/nodes", a.admin)).await;
    assert_eq!(ids(&admin), ["node-a", "node-b", "node-c"], "{admin}");
    assert_eq!(admin["nodes"][0]["this_node"], true);
    assert_eq!(admin["nodes"][0]["store"], "redis");

    // Drained: gone at once, not after the lease.
    let status = terminate(&mut b).await;
    assert!(status.success());
    assert_eq!(listed(&http, a.push).await, ["node-a", "node-c"]);

    // Killed: it stops renewing and drops out within its lease.
    c.child.kill().expect("kill");
    let _ = c.child.wait();
    until_listed(&http, a.push, &["node-a"]).await;
    let ready = http
        .get(format!("http://{}/readyz", a.admin))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.expect("json");
    assert_eq!(body["registry"], "ok", "{body}");
}

#[tokio::test]
async fn the_sdk_finds_nodes_through_the_dispatcher_and_falls_back_when_one_drains() {
    use duplex_client::{Client, ClientOptions};
    let redis = TestRedis::start().expect("redis-server");
    let env = [("DUPLEX_ACCESS__GOAWAY_WINDOW_MS", "300")];
    let a = start_with_env(&["--redis", &redis.url(), "--node-id", "node-a"], &env);
    let b = start_with_env(&["--redis", &redis.url(), "--node-id", "node-b"], &env);
    let http = reqwest::Client::new();
    until_listed(&http, a.push, &["node-a", "node-b"]).await;
    let token = mint("dan");
    let mut options = ClientOptions::new(Vec::new(), "dan-phone", std::sync::Arc::new(move || token.clone()));
    options.dispatchers = vec![
        format!("http://{}/v1/nodes", a.push),
        format!("http://{}/v1/nodes", b.push),
    ];
    options.backoff_min = Duration::from_millis(20);
    options.backoff_max = Duration::from_millis(100);
    let mut client = Client::start(options);
    let first = connected_node(&mut client).await;
    let (mut gone, survivor) = if first == "node-a" {
        (a, "node-b")
    } else {
        (b, "node-a")
    };
    assert!(terminate(&mut gone).await.success());
    assert_eq!(
        connected_node(&mut client).await,
        survivor,
        "the client moved to the node the dispatcher still lists"
    );
}

async fn connected_node(client: &mut duplex_client::Client) -> String {
    use duplex_client::Event;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("an event within 10 s")
            .expect("client running")
        {
            Event::Connected { node_id, .. } => return node_id,
            Event::Connecting { .. } | Event::Disconnected { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}
