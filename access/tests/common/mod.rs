//! Test harness: an access node on 127.0.0.1:0 with either store, clients
//! over either transport, and bounded polling for asynchronous state.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use duplex_access::auth::{dev_claims, mint_hs256, TokenVerifier};
use duplex_access::config::{AccessConfig, AuthConfig};
use duplex_access::{AccessContext, AccessListeners, Hub, LocalNodes};
use duplex_client::Connection;
use duplex_shared::protocol::{ErrorFrame, Frame};
use duplex_store::{MemoryStore, RedisStore, Store};
use duplex_testkit::{random_prefix, TestRedis};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "access-tests-secret-with-32-bytes-or-more";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Tcp,
    Ws,
}

pub struct TestNode {
    pub node_id: String,
    pub tcp: SocketAddr,
    pub ws: SocketAddr,
    /// The TLS listeners, when the test configured them.
    pub tls: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    pub hub: Arc<Hub>,
    pub store: Arc<dyn Store>,
    pub shutdown: CancellationToken,
    pub task: Option<JoinHandle<()>>,
    pub metrics: Arc<duplex_shared::metrics::Metrics>,
    _redis: Option<TestRedis>,
}

#[allow(unused_imports)]
pub use duplex_testkit::{eventually, recv};

pub fn test_config() -> AccessConfig {
    AccessConfig {
        tcp_listen: "127.0.0.1:0".parse().expect("addr"),
        ws_listen: "127.0.0.1:0".parse().expect("addr"),
        ..AccessConfig::default()
    }
}

pub async fn start_node(kind: StoreKind, tweak: impl FnOnce(&mut AccessConfig)) -> TestNode {
    let (store, redis): (Arc<dyn Store>, _) = match kind {
        StoreKind::Memory => (Arc::new(MemoryStore::new()), None),
        StoreKind::Redis => {
            let server = TestRedis::start().expect("redis-server");
            let store = RedisStore::connect(&server.url(), &random_prefix())
                .await
                .expect("redis");
            (Arc::new(store), Some(server))
        }
    };
    start_node_with_store(store, redis, tweak).await
}

pub async fn start_node_with_store(
    store: Arc<dyn Store>,
    redis: Option<TestRedis>,
    tweak: impl FnOnce(&mut AccessConfig),
) -> TestNode {
    let mut config = test_config();
    tweak(&mut config);
    config.validate().expect("valid test config");
    let mut auth = AuthConfig {
        secret: Some(SECRET.into()),
        ..AuthConfig::default()
    };
    auth.resolve(true).expect("auth");
    let node_id = format!("t-{:06x}", rand::random::<u32>() & 0xffffff);
    let hub = Arc::new(Hub::new(node_id.clone()));
    let metrics = Arc::new(duplex_shared::metrics::Metrics::new());
    let listeners = AccessListeners::bind(&config).expect("bind");
    let tcp = listeners.tcp.local_addr().expect("addr");
    let ws = listeners.ws.local_addr().expect("addr");
    let tls_addr = listeners.tls.as_ref().map(|l| l.local_addr().expect("addr"));
    let wss_addr = listeners.wss.as_ref().map(|l| l.local_addr().expect("addr"));
    let certs = config
        .tls
        .as_ref()
        .map(|files| duplex_access::tls::Certificates::load(files).expect("test certificate"));
    let ctx = AccessContext {
        tls: certs,
        config,
        node_id: node_id.clone(),
        verifier: Arc::new(TokenVerifier::new(&auth).expect("verifier")),
        store: store.clone(),
        nodes: Arc::new(LocalNodes::new(hub.clone())),
        upstream: Arc::new(UnreachableBackends),
        hub: hub.clone(),
        metrics: metrics.clone(),
        events: None,
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(duplex_access::run(ctx, listeners, shutdown.clone()));
    TestNode {
        node_id,
        tcp,
        ws,
        tls: tls_addr,
        wss: wss_addr,
        hub,
        store,
        shutdown,
        task: Some(task),
        metrics,
        _redis: redis,
    }
}

impl TestNode {
    /// Kills the node's private redis-server (if it has one): every store call fails from now on.
    pub fn kill_redis(&mut self) {
        self._redis.take();
    }

    pub async fn open(&self, via: Via) -> Connection {
        match via {
            Via::Tcp => Connection::tcp(self.tcp).await.expect("tcp connect"),
            Via::Ws => Connection::ws(&format!("ws://{}/", self.ws)).await.expect("ws connect"),
        }
    }

    /// Logs in as `user` with `client_id` from a socket with a 2 KiB receive
    /// buffer: a client that stops reading fills it at once.
    pub async fn login_with_small_receive_buffer(&self, via: Via, user: &str, client_id: &str) -> Connection {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(2048).expect("rcvbuf");
        let addr = match via {
            Via::Tcp => self.tcp,
            Via::Ws => self.ws,
        };
        let stream = socket.connect(addr).await.expect("connect");
        let mut conn = match via {
            Via::Tcp => Connection::from_tcp(stream),
            Via::Ws => Connection::ws_over(stream, &format!("ws://{addr}/")).await.expect("ws"),
        };
        conn.handshake(&token(user), client_id, 0).await.expect("handshake");
        conn
    }

    /// Opens and authenticates as `user` with `client_id`.
    pub async fn login(&self, via: Via, user: &str, client_id: &str) -> Connection {
        let mut conn = self.open(via).await;
        conn.handshake(&token(user), client_id, 0).await.expect("handshake");
        conn
    }

    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), t)
                .await
                .expect("stops in time")
                .expect("no panic");
        }
    }
}

pub fn token(user: &str) -> String {
    mint_hs256(SECRET, &dev_claims(user, 3600)).expect("mint")
}

pub async fn expect_error(conn: &mut Connection) -> ErrorFrame {
    match recv(conn).await {
        Some(Frame::Error(e)) => e,
        other => panic!("expected an Error frame, got {other:?}"),
    }
}

pub async fn expect_closed(conn: &mut Connection) {
    for _ in 0..16 {
        match recv(conn).await {
            None => return,
            Some(Frame::Pong(_)) => continue,
            Some(other) => panic!("expected close, got {other:?}"),
        }
    }
    panic!("connection not closed");
}

/// The access tier's view of an upstream tier whose backends are all down:
/// every upload and request fails as retryable.
pub struct UnreachableBackends;

#[async_trait::async_trait]
impl duplex_shared::links::UpstreamLink for UnreachableBackends {
    async fn upload(
        &self,
        _from: &duplex_shared::links::ClientContext,
        _upload: duplex_shared::protocol::Upload,
    ) -> Result<duplex_shared::protocol::UploadAck, duplex_shared::links::LinkError> {
        Err(duplex_shared::links::LinkError::Unavailable("backends down".into()))
    }

    async fn request(
        &self,
        _from: &duplex_shared::links::ClientContext,
        _request: duplex_shared::protocol::Request,
    ) -> Result<(), duplex_shared::links::LinkError> {
        Err(duplex_shared::links::LinkError::Unavailable("backends down".into()))
    }
}

/// Registers another live access node `node_id` (on 127.0.0.9, its TLS
/// listeners when given) in `store`, for drains to send clients to.
pub async fn register_peer_node(store: &dyn Store, node_id: &str, tls: Option<&str>, wss: Option<&str>) {
    store
        .register_node(&duplex_store::NodeInfo {
            node_id: node_id.into(),
            tiers: vec!["access".into()],
            tcp: "127.0.0.9:7070".into(),
            ws: "ws://127.0.0.9:7071/".into(),
            tls: tls.map(str::to_owned),
            wss: wss.map(str::to_owned),
            internal: String::new(),
            region: None,
            connections: 0,
            max_connections: 100,
            expires_ms: duplex_store::now_ms() + 60_000,
        })
        .await
        .expect("register");
}
