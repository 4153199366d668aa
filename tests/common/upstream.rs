//! Helpers of the upstream end-to-end tests: services over test backends,
//! upload and request frames, and reading their answers.

use std::collections::HashMap;

use duplex_client::Connection;
use duplex_node::config::{EndpointConfig, ServiceConfig, UpstreamConfig};
use duplex_shared::protocol::{ErrorFrame, Frame, Reply, Upload, UploadAck};

use super::backend::Backend;
use super::*;

pub fn service(backends: &[&Backend], tweak: impl FnOnce(&mut ServiceConfig)) -> ServiceConfig {
    let mut s = ServiceConfig {
        endpoints: backends
            .iter()
            .map(|b| EndpointConfig {
                url: format!("{}/api", b.url()),
                weight: 1,
            })
            .collect(),
        methods: vec!["GET".into(), "POST".into(), "PUT".into()],
        pass_headers: vec!["content-type".into(), "x-app-version".into()],
        try_timeout_ms: 1_000,
        deadline_ms: 3_000,
        ..ServiceConfig::default()
    };
    tweak(&mut s);
    s
}

/// Services `svc` (and `keyed`, whose backend honours Idempotency-Key) with fast ejection.
pub fn upstream_config(svc: ServiceConfig, keyed: Option<ServiceConfig>) -> UpstreamConfig {
    let mut c = UpstreamConfig {
        eject_base_ms: 100,
        eject_max_ms: 400,
        retry_budget_min_per_s: 1_000,
        ..UpstreamConfig::default()
    };
    c.services.insert("svc".into(), svc);
    if let Some(k) = keyed {
        c.services.insert("keyed".into(), k);
    }
    c
}

pub async fn node_for(kind: StoreKind, config: UpstreamConfig) -> Node {
    let (store, redis) = new_store(kind).await;
    start_with_upstream(store, redis, "up-node", |_| {}, 0, config).await
}

pub fn upload(id: u64, path: &str, body: &str) -> Frame {
    let mut headers = duplex_shared::protocol::Headers::new();
    headers.insert("content-type".into(), "application/json".into());
    headers.insert("x-app-version".into(), "7.1".into());
    headers.insert("x-secret-internal".into(), "must not pass".into());
    headers.insert("x-duplex-user-id".into(), "forged".into());
    Frame::Upload(Upload {
        id,
        service: "svc".into(),
        path: path.into(),
        headers,
        body: body.to_owned().into(),
    })
}

pub async fn upload_ack(conn: &mut Connection) -> UploadAck {
    match recv(conn).await {
        Some(Frame::UploadAck(a)) => a,
        other => panic!("expected an upload_ack, got {other:?}"),
    }
}

pub async fn error_frame(conn: &mut Connection) -> ErrorFrame {
    match recv(conn).await {
        Some(Frame::Error(e)) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The next reply (acked, like a client does), skipping nothing else.
pub async fn reply(conn: &mut Connection) -> Reply {
    match recv(conn).await {
        Some(Frame::Reply(r)) => {
            assert!(r.seq > 0, "a reply travels as a stored message");
            ack(conn, r.seq).await;
            r
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// Sends `n` requests and collects their replies by request id.
pub async fn round_trip(
    conn: &mut Connection,
    first_id: u64,
    n: u64,
    service: &str,
    method: &str,
) -> HashMap<u64, Reply> {
    let mut replies = HashMap::new();
    for id in first_id..first_id + n {
        conn.send(&request_frame(id, service, method, &format!("/r/{id}")))
            .await
            .expect("send");
        let r = reply(conn).await;
        replies.insert(r.id, r);
    }
    replies
}
