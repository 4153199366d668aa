//! Split mode: `duplex access`, `duplex upstream` and `duplex downstream` as
//! separate processes on one private Redis, talking over their internal
//! listeners. Pushes, requests and uploads cross tiers; killed upstream and
//! downstream nodes lose nothing a client or backend was told was taken.

mod common;

use std::time::Duration;

use common::backend::{Backend, Mode};
use common::process::*;
use duplex_client::Connection;
use duplex_shared::protocol::{Ack, Frame, Upload};
use duplex_testkit::{TestRedis, TestRedisCluster};
use serde_json::{json, Value};

const API_KEY: &str = "duplex-dev-api-key";

fn service_config(backend: &Backend) -> ConfigFile {
    config_file(&format!(
        "[downstream]\nmax_batch = 2000\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}/api\" }}]\npath_prefixes = [\"/orders\"]\nmethods = [\"GET\", \"POST\"]\ndeadline_ms = 8000\n",
        backend.url()
    ))
}

/// A single server or a cluster, by URL.
trait Redis {
    fn url(&self) -> String;
}

impl Redis for TestRedis {
    fn url(&self) -> String {
        TestRedis::url(self)
    }
}

impl Redis for TestRedisCluster {
    fn url(&self) -> String {
        TestRedisCluster::url(self)
    }
}

fn node(tier: &str, redis: &dyn Redis, id: &str, config: &ConfigFile) -> TierNode {
    start_tier(
        tier,
        &["--redis", &redis.url(), "--node-id", id, "--config", &config.path],
    )
}

async fn get_text(url: String) -> String {
    reqwest::get(url).await.expect("get").text().await.expect("text")
}

/// `duplex_backend_calls_total` of an upstream node, all endpoints and outcomes.
async fn backend_calls(node: &TierNode) -> u64 {
    get_text(format!("http://{}/metrics", node.admin))
        .await
        .lines()
        .filter(|l| l.starts_with("duplex_backend_calls_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test]
async fn six_split_nodes_carry_pushes_requests_and_uploads() {
    six_split_nodes_on(&TestRedis::start().expect("redis-server")).await;
}

#[tokio::test]
async fn six_split_nodes_on_a_redis_cluster() {
    six_split_nodes_on(&TestRedisCluster::start().expect("redis cluster")).await;
}

async fn six_split_nodes_on(redis: &dyn Redis) {
    let backend = Backend::start().await;
    let config = service_config(&backend);
    let access_a = node("access", redis, "access-a", &config);
    let access_b = node("access", redis, "access-b", &config);
    let up = [
        node("upstream", redis, "upstream-1", &config),
        node("upstream", redis, "upstream-2", &config),
    ];
    let down = [
        node("downstream", redis, "downstream-1", &config),
        node("downstream", redis, "downstream-2", &config),
    ];
    assert!(access_a.push.is_none() && up[0].tcp.is_none() && down[0].tcp.is_none());
    let http = reqwest::Client::new();

    // Dispatch lists the access nodes only, from any downstream node.
    let nodes = call_json(
        &http,
        reqwest::Method::GET,
        format!("http://{}/v1/nodes", down[0].push()),
        None,
    )
    .await
    .1;
    let mut listed: Vec<&str> = nodes["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    listed.sort();
    assert_eq!(listed, ["access-a", "access-b"], "{nodes}");

    // A client on access A gets a push posted to downstream 2.
    let mut conn = Connection::tcp(access_a.tcp()).await.expect("tcp");
    conn.handshake(&mint("ann"), "ann-phone", 0).await.expect("handshake");
    push_arrives_live(down[1].push(), "ann-phone", &mut conn).await;

    // Requests from the client on access A are served through both upstream nodes.
    for id in 1..=40 {
        let reply = ask_with(&mut conn, id, "orders", "GET", &format!("/orders/{id}")).await;
        assert_eq!(reply.status, 200, "request {id}: {reply:?}");
    }
    let calls = [backend_calls(&up[0]).await, backend_calls(&up[1]).await];
    assert_eq!(calls[0] + calls[1], 40, "{calls:?}");
    assert!(
        calls.iter().all(|&c| c > 0),
        "both upstream nodes served requests: {calls:?}"
    );
    assert_eq!(backend.count(), 40);

    // An upload from a client on access B is acked after the backend took it.
    let mut other = Connection::tcp(access_b.tcp()).await.expect("tcp");
    other.handshake(&mint("bob"), "bob-phone", 0).await.expect("handshake");
    other
        .send(&Frame::Upload(Upload {
            id: 7,
            service: "orders".into(),
            path: "/orders/new".into(),
            headers: Default::default(),
            body: b"{\"n\":7}".to_vec().into(),
        }))
        .await
        .expect("upload");
    match next_frame(&mut other).await {
        Some(Frame::UploadAck(ack)) => assert_eq!((ack.id, ack.status, ack.spooled), (7, 200, false)),
        other => panic!("expected an upload ack, got {other:?}"),
    }
    let hit = backend.hits().pop().expect("hit");
    assert_eq!(
        (hit.target.as_str(), hit.body.as_ref()),
        ("/api/orders/new", &b"{\"n\":7}"[..])
    );
    assert_eq!(hit.headers["x-duplex-client-id"], "bob-phone");

    // Any node's admin API answers for the whole deployment: an access node
    // forwards a pools call to an upstream node (docs/OPERATIONS.md, Admin API).
    let pools = http
        .get(format!("http://{}/admin/v1/pools", access_a.admin))
        .send()
        .await
        .expect("pools");
    assert_eq!(pools.status(), 200);
    let answered_by = pools
        .headers()
        .get("x-duplex-answered-by")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    assert!(
        answered_by.as_deref().is_some_and(|n| n.starts_with("upstream-")),
        "{answered_by:?}"
    );
    let body: Value = pools.json().await.expect("json");
    assert!(body["pools"]["orders"].is_array(), "{body}");
    let pools = call_json(
        &http,
        reqwest::Method::GET,
        format!("http://{}/admin/v1/pools", up[0].admin),
        None,
    )
    .await
    .1;
    assert!(pools["pools"]["orders"].is_array(), "{pools}");
}

#[tokio::test]
async fn a_killed_upstream_node_mid_request_still_answers_every_request() {
    let redis = TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    backend.set(Mode::Slow(Duration::from_millis(1500)));
    let config = service_config(&backend);
    let access = node("access", &redis, "access-a", &config);
    let _down = node("downstream", &redis, "downstream-1", &config);
    let mut first = node("upstream", &redis, "upstream-1", &config);
    let mut conn = Connection::tcp(access.tcp()).await.expect("tcp");
    conn.handshake(&mint("cy"), "cy-phone", 0).await.expect("handshake");

    // A GET (safe to repeat) and a POST (not: no idempotency keys on this service),
    // both at the slow backend through the only upstream node, which then dies.
    for (id, method) in [(1, "GET"), (2, "POST")] {
        conn.send(&common::request_frame(id, "orders", method, &format!("/orders/{id}")))
            .await
            .expect("request");
    }
    common::eventually("both requests reach the backend", || async { backend.count() == 2 }).await;
    let _second = node("upstream", &redis, "upstream-2", &config);
    first.sigkill();

    // The GET is repeated through upstream 2; the POST gets a clear error reply.
    let mut replies = std::collections::BTreeMap::new();
    while replies.len() < 2 {
        match next_frame(&mut conn).await {
            Some(Frame::Reply(r)) => {
                conn.send(&Frame::Ack(Ack { id: r.seq, seq: r.seq }))
                    .await
                    .expect("ack");
                replies.insert(r.id, r);
            }
            other => panic!("expected replies, got {other:?}"),
        }
    }
    assert_eq!(replies[&1].status, 200, "{:?}", replies[&1]);
    assert_eq!(
        (
            replies[&2].status,
            replies[&2].headers.get("x-duplex-error").map(String::as_str)
        ),
        (502, Some("upstream_lost")),
        "{:?}",
        replies[&2]
    );
    let methods: Vec<String> = backend.hits().into_iter().map(|h| h.method).collect();
    assert_eq!(
        methods.iter().filter(|m| *m == "GET").count(),
        2,
        "the GET was repeated: {methods:?}"
    );
    assert_eq!(
        methods.iter().filter(|m| *m == "POST").count(),
        1,
        "the POST was not: {methods:?}"
    );
}

#[tokio::test]
async fn a_killed_downstream_node_mid_batch_leaves_one_copy_per_idempotency_key() {
    let redis = TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    let config = service_config(&backend);
    let access = node("access", &redis, "access-a", &config);
    let mut first = node("downstream", &redis, "downstream-1", &config);
    let second = node("downstream", &redis, "downstream-2", &config);
    let clients = 20;
    let per_client = 100;
    let batch: Vec<Value> = (0..clients * per_client)
        .map(|n| {
            json!({
                "client_ids": [format!("dev-{}", n % clients)],
                "payload": n,
                "idempotency_key": format!("order-{n}"),
            })
        })
        .collect();
    let body = json!({ "pushes": batch });
    let http = reqwest::Client::new();
    let post = |to: std::net::SocketAddr| {
        http.post(format!("http://{to}/v1/push/batch"))
            .bearer_auth(API_KEY)
            .json(&body)
            .send()
    };
    // Killed while the batch is in its hands: the backend may or may not get an answer.
    let in_flight = post(first.push());
    let killer = async {
        common::eventually("the batch is being stored", || async {
            let v = call_json(
                &http,
                reqwest::Method::GET,
                format!("http://{}/v1/clients/dev-0", second.push()),
                Some(API_KEY),
            )
            .await
            .1;
            v["pending"].as_u64().unwrap_or(0) > 0
        })
        .await;
        first.sigkill();
    };
    let (answer, ()) = tokio::join!(in_flight, killer);
    let first_answer = answer.map(|r| r.status().as_u16()).ok();
    eprintln!("the killed node answered the first batch: {first_answer:?}");

    // The backend retries the same batch on the other node: every item answered.
    let retried: Value = post(second.push()).await.expect("retry").json().await.expect("json");
    let items = retried["results"].as_array().expect("results");
    assert_eq!(items.len(), clients * per_client, "{retried}");
    assert!(
        items.iter().all(|i| i["status"] == 202),
        "every item is accepted on the retry: {retried}"
    );

    // Each client holds exactly one copy per key.
    for c in 0..clients {
        let mut conn = Connection::tcp(access.tcp()).await.expect("tcp");
        conn.handshake(&mint("fleet"), &format!("dev-{c}"), 0)
            .await
            .expect("handshake");
        let mut got = Vec::new();
        while got.len() < per_client {
            match next_frame(&mut conn).await {
                Some(Frame::Push(p)) => {
                    got.push(serde_json::from_slice::<u64>(&p.payload).expect("payload"));
                    conn.send(&Frame::Ack(Ack { id: p.seq, seq: p.seq }))
                        .await
                        .expect("ack");
                }
                other => panic!("expected pushes, got {other:?}"),
            }
        }
        got.sort_unstable();
        let expected: Vec<u64> = (0..per_client as u64).map(|k| k * clients as u64 + c as u64).collect();
        assert_eq!(got, expected, "client dev-{c} (first answer: {first_answer:?})");
        conn.send(&Frame::Ping(duplex_shared::protocol::Ping { id: 99 }))
            .await
            .expect("ping");
        assert!(
            matches!(next_frame(&mut conn).await, Some(Frame::Pong(_))),
            "no further copy of anything for dev-{c}"
        );
    }
}

/// Two access nodes, one upstream, two downstream; pushes go through downstream 2.
fn access_pair(redis: &dyn Redis, config: &ConfigFile) -> [TierNode; 5] {
    [
        node("access", redis, "access-a", config),
        node("access", redis, "access-b", config),
        node("upstream", redis, "upstream-1", config),
        node("downstream", redis, "downstream-1", config),
        node("downstream", redis, "downstream-2", config),
    ]
}

#[tokio::test]
async fn a_killed_access_node_loses_no_push_in_split_mode() {
    let redis = TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    let config = service_config(&backend);
    let [mut a, b, _up, _d1, d2] = access_pair(&redis, &config);
    let a_tcp = a.tcp();
    common::scenarios::kill_during_a_push_stream(a_tcp, b.tcp(), "access-a", d2.push(), move || a.sigkill()).await;
}

#[tokio::test]
async fn draining_an_access_node_with_1000_clients_in_split_mode() {
    let redis = TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    let config = config_file(&format!(
        // The 1000 "devices" all connect at once from the test's one address.
        "[access]\ngoaway_window_ms = 1000\nmax_unauthenticated_per_source = 1024\n\n{}",
        std::fs::read_to_string(&service_config(&backend).path).expect("config")
    ));
    let [mut a, b, _up, _d1, d2] = access_pair(&redis, &config);
    let a_tcp = a.tcp();
    common::scenarios::drain_with_1000_clients(
        a_tcp,
        b.tcp(),
        "access-a",
        d2.push(),
        async move { a.terminate().await },
    )
    .await;
}
