//! A whole node in process (every tier, built by `duplex_node::Node::start`
//! as the binary builds it) on 127.0.0.1:0 with either store, clients over
//! TCP or WebSocket, and an HTTP client for the push API (feature `node`).

use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::wait::{eventually, recv};
use crate::{random_prefix, TestRedis};
use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_access::Hub;
use duplex_client::Connection;
use duplex_node::config::{AccessConfig, AuthConfig, Config, DownstreamConfig, UpstreamConfig};
use duplex_node::{Tiers, Wiring};
use duplex_shared::links::{LinkError, NodeLink};
use duplex_shared::metrics::Metrics;
use duplex_shared::protocol::{Ack, Frame, Push};
use duplex_store::Route;
use duplex_store::{MemoryStore, RedisStore, Store};
use duplex_upstream::Upstream;
use serde_json::Value;

pub const SECRET: &str = "end-to-end-tests-secret-with-32-bytes+";
pub const API_KEY: &str = "end-to-end-api-key-0123456789";
pub const INTERNAL_SECRET: &str = "end-to-end-internal-secret-0123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

pub struct Node {
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    pub api: String,
    pub store: Arc<dyn Store>,
    pub hub: Arc<Hub>,
    pub upstream: Arc<Upstream>,
    pub http: reqwest::Client,
    pub metrics: Arc<Metrics>,
    node: duplex_node::Node,
    _redis: Option<TestRedis>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.node.begin_stop();
    }
}

pub async fn start(kind: StoreKind, tweak: impl FnOnce(&mut DownstreamConfig)) -> Node {
    start_with(kind, tweak, 0).await
}

/// A `NodeLink` whose first `failures` deliveries fail as if the node were unreachable.
struct FlakyNodes {
    inner: Arc<dyn NodeLink>,
    failures: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl NodeLink for FlakyNodes {
    async fn deliver(&self, node_id: &str, client_id: &str, epoch: Option<u64>, frame: Frame) -> Result<(), LinkError> {
        let left = self.failures.load(std::sync::atomic::Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, std::sync::atomic::Ordering::SeqCst);
            return Err(LinkError::Unavailable("injected failure".into()));
        }
        self.inner.deliver(node_id, client_id, epoch, frame).await
    }
    async fn kick(&self, client_id: &str, route: &Route, reason: &str) -> Result<(), LinkError> {
        self.inner.kick(client_id, route, reason).await
    }
    async fn broadcast(&self, frame: Frame) -> Result<u64, LinkError> {
        self.inner.broadcast(frame).await
    }
    async fn connected_since(&self, client_id: &str, route: &Route) -> Result<Option<u64>, LinkError> {
        self.inner.connected_since(client_id, route).await
    }
}

/// Like `start`, with the first `failing_deliveries` downstream deliveries failing.
pub async fn start_with(kind: StoreKind, tweak: impl FnOnce(&mut DownstreamConfig), failing_deliveries: usize) -> Node {
    let (store, redis) = new_store(kind).await;
    start_on_store(store, redis, "e2e-node", tweak, failing_deliveries).await
}

/// A fresh store of `kind` (and the private redis-server behind it).
pub async fn new_store(kind: StoreKind) -> (Arc<dyn Store>, Option<TestRedis>) {
    match kind {
        StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
        StoreKind::Redis => {
            let server = TestRedis::start().expect("redis-server");
            let store = RedisStore::connect(&server.url(), &random_prefix())
                .await
                .expect("redis");
            (Arc::new(store), Some(server))
        }
    }
}

/// A node named `node_id` on an existing store (several nodes may share one).
pub async fn start_on_store(
    store: Arc<dyn Store>,
    redis: Option<TestRedis>,
    node_id: &str,
    tweak: impl FnOnce(&mut DownstreamConfig),
    failing_deliveries: usize,
) -> Node {
    start_with_upstream(
        store,
        redis,
        node_id,
        tweak,
        failing_deliveries,
        UpstreamConfig::default(),
    )
    .await
}

/// A node whose upstream tier serves the backend services of `upstream`.
pub async fn start_with_upstream(
    store: Arc<dyn Store>,
    redis: Option<TestRedis>,
    node_id: &str,
    tweak: impl FnOnce(&mut DownstreamConfig),
    failing_deliveries: usize,
    upstream: UpstreamConfig,
) -> Node {
    start_full(store, redis, node_id, |_| {}, tweak, failing_deliveries, upstream).await
}

/// A node of `kind` with its access settings changed by `tweak_access`.
pub async fn start_tuned(kind: StoreKind, tweak_access: impl FnOnce(&mut AccessConfig)) -> Node {
    let (store, redis) = new_store(kind).await;
    start_full(
        store,
        redis,
        "e2e-node",
        tweak_access,
        |_| {},
        0,
        UpstreamConfig::default(),
    )
    .await
}

async fn start_full(
    store: Arc<dyn Store>,
    redis: Option<TestRedis>,
    node_id: &str,
    tweak_access: impl FnOnce(&mut AccessConfig),
    tweak: impl FnOnce(&mut DownstreamConfig),
    failing_deliveries: usize,
    upstream: UpstreamConfig,
) -> Node {
    let any = "127.0.0.1:0".parse().expect("addr");
    let mut config = Config {
        node_id: Some(node_id.into()),
        access: AccessConfig {
            tcp_listen: any,
            ws_listen: any,
            // Clients told to go away come back within half a second (tests wait 10 s at most).
            goaway_window_ms: 500,
            ..AccessConfig::default()
        },
        downstream: DownstreamConfig {
            http_listen: any,
            api_keys: vec![API_KEY.into()],
            retry_min_ms: 20,
            retry_max_ms: 200,
            ..DownstreamConfig::default()
        },
        upstream,
        auth: AuthConfig {
            secret: Some(SECRET.into()),
            ..AuthConfig::default()
        },
        ..Config::default()
    };
    config.admin.listen = any;
    config.registry.internal_listen = any;
    // Nodes sharing a store call each other like a deployment's nodes do.
    config.registry.internal_secret = Some(INTERNAL_SECRET.into());
    tweak_access(&mut config.access);
    tweak(&mut config.downstream);
    config.validate().expect("valid config");
    let wiring = Wiring {
        store: Some(store),
        wrap_node_link: Some(Box::new(move |inner: Arc<dyn NodeLink>| -> Arc<dyn NodeLink> {
            Arc::new(FlakyNodes {
                inner,
                failures: failing_deliveries.into(),
            })
        })),
    };
    let node = duplex_node::Node::start(config, Tiers::ALL, wiring)
        .await
        .expect("node starts");
    let (tcp, ws) = node.addresses.client.expect("client listeners");
    Node {
        tcp,
        ws,
        api: format!("http://{}", node.addresses.push_api.expect("push API")),
        store: node.store.clone(),
        hub: node.hub.clone(),
        upstream: node.upstream.clone().expect("upstream tier"),
        http: reqwest::Client::new(),
        metrics: node.metrics.clone(),
        node,
        _redis: redis,
    }
}

impl Node {
    /// The pid of the node's private redis-server, if it runs on one.
    pub fn redis_pid(&self) -> Option<u32> {
        self._redis.as_ref().map(TestRedis::pid)
    }

    /// Shuts the node down (clients get `go_away`).
    pub fn stop(&self) {
        self.node.begin_stop();
    }

    /// Connects `client_id` of `user` over TCP, resuming after `last_seq`.
    pub async fn connect(&self, user: &str, client_id: &str, last_seq: u64) -> Connection {
        let mut conn = Connection::tcp(self.tcp).await.expect("tcp");
        let token = mint_hs256(SECRET, &dev_claims(user, 3600)).expect("mint");
        conn.handshake(&token, client_id, last_seq).await.expect("handshake");
        conn
    }

    /// A connect of `client_id` as `user` that may be refused.
    pub async fn try_connect(&self, user: &str, client_id: &str) -> Result<Connection, duplex_client::ClientError> {
        let mut conn = Connection::tcp(self.tcp).await.expect("tcp");
        let token = mint_hs256(SECRET, &dev_claims(user, 3600)).expect("mint");
        conn.handshake(&token, client_id, 0).await?;
        Ok(conn)
    }

    pub async fn connect_ws(&self, user: &str, client_id: &str, last_seq: u64) -> Connection {
        let mut conn = Connection::ws(&format!("ws://{}/", self.ws)).await.expect("ws");
        let token = mint_hs256(SECRET, &dev_claims(user, 3600)).expect("mint");
        conn.handshake(&token, client_id, last_seq).await.expect("handshake");
        conn
    }

    /// POSTs `body` to `path` with the API key; returns status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        let resp = self
            .http
            .post(format!("{}{path}", self.api))
            .bearer_auth(API_KEY)
            .json(body)
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.api)).body(body.to_owned());
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        answer(req).await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        answer(self.http.get(format!("{}{path}", self.api)).bearer_auth(API_KEY)).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        answer(self.http.delete(format!("{}{path}", self.api)).bearer_auth(API_KEY)).await
    }

    /// Pushes a JSON payload to one client; asserts 202 and returns the item.
    pub async fn push_to(&self, client_id: &str, payload: Value) -> Value {
        let (status, body) = self
            .post(
                "/v1/push",
                &serde_json::json!({"client_ids": [client_id], "payload": payload}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["messages"][0].clone()
    }
}

/// Sends `req`; returns the status and the JSON body (null if none).
async fn answer(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

pub async fn recv_push(conn: &mut Connection) -> Push {
    match recv(conn).await {
        Some(Frame::Push(p)) => p,
        other => panic!("expected a push, got {other:?}"),
    }
}

pub async fn ack(conn: &mut Connection, seq: u64) {
    conn.send(&Frame::Ack(Ack { id: seq, seq })).await.expect("ack");
}

/// A request frame without headers or body, on the service's deadline.
pub fn request_frame(id: u64, service: &str, method: &str, path: &str) -> Frame {
    Frame::Request(duplex_shared::protocol::Request {
        id,
        service: service.into(),
        method: method.into(),
        path: path.into(),
        headers: Default::default(),
        body: Default::default(),
        timeout_ms: 0,
    })
}

pub fn json_payload(p: &Push) -> Value {
    serde_json::from_slice(&p.payload).expect("json payload")
}
