//! The reconnecting SDK client against a real node.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use duplex_access::auth::{dev_claims, mint_hs256};
use duplex_client::{Client, ClientOptions, Endpoint, Event};
use serde_json::json;

/// The next event other than `Connecting` (attempts are not what these tests look at).
async fn next_event(client: &mut Client) -> Event {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("an event within 10 s")
            .expect("client running");
        if !matches!(event, Event::Connecting { .. }) {
            return event;
        }
    }
}

async fn next_push_seq(client: &mut Client) -> u64 {
    loop {
        match next_event(client).await {
            Event::Push(p) => return p.seq,
            Event::Connected { .. } | Event::Disconnected { .. } => continue,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_client_reconnects_resumes_and_delivers_each_push_once() {
    for kind in [StoreKind::Memory, StoreKind::Redis] {
        let node = start(kind, |_| {}).await;
        let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("sam", 3600)).expect("mint"));
        let options = ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "sam-phone", token);
        let mut client = Client::start(options);
        assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
        node.push_to("sam-phone", json!(1)).await;
        node.push_to("sam-phone", json!(2)).await;
        assert_eq!(next_push_seq(&mut client).await, 1);
        assert_eq!(next_push_seq(&mut client).await, 2);
        // Wait until the acks landed, then drop the connection from the server side.
        eventually("acks stored", || async {
            node.get("/v1/clients/sam-phone").await.1["last_acked_seq"] == 2
        })
        .await;
        assert_eq!(node.delete("/v1/clients/sam-phone").await.0, 200);
        match next_event(&mut client).await {
            Event::Disconnected { reason } => assert!(reason.contains("admin"), "{reason}"),
            other => panic!("expected a disconnect, got {other:?}"),
        }
        // A push while the client is away arrives once it is back, exactly once.
        node.push_to("sam-phone", json!(3)).await;
        assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
        assert_eq!(next_push_seq(&mut client).await, 3);
        node.push_to("sam-phone", json!(4)).await;
        assert_eq!(
            next_push_seq(&mut client).await,
            4,
            "no duplicates of 1..3 after the reconnect"
        );
    }
}

#[tokio::test]
async fn an_expiring_token_is_refreshed_without_a_reconnect() {
    let node = start(StoreKind::Memory, |_| {}).await;
    let asked = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counter = asked.clone();
    // The first token lives 2 s; the provider's next ones an hour.
    let token = Arc::new(move || {
        let ttl = match counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
            0 => 2,
            _ => 3600,
        };
        mint_hs256(SECRET, &dev_claims("tia", ttl)).expect("mint")
    });
    let mut client = Client::start(ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "tia-phone", token));
    assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
    eventually("the SDK refreshed the token in-band", || async {
        asked.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    // Past the first token's expiry (and the refresh), the same connection delivers.
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.push_to("tia-phone", json!("still here")).await;
    match next_event(&mut client).await {
        Event::Push(p) => assert_eq!(p.seq, 1),
        other => panic!("expected the push on the same connection, got {other:?}"),
    }
    assert_eq!(
        asked.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "no reconnect asked for another token"
    );
}

#[tokio::test]
async fn a_second_instance_replaces_the_first_for_good() {
    let node = start(StoreKind::Memory, |_| {}).await;
    let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("sam", 3600)).expect("mint"));
    let mut first = Client::start(ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "dup", token.clone()));
    assert!(matches!(next_event(&mut first).await, Event::Connected { .. }));
    let mut second = Client::start(ClientOptions::new(
        vec![Endpoint::Ws(format!("ws://{}/", node.ws))],
        "dup",
        token,
    ));
    assert!(matches!(next_event(&mut second).await, Event::Connected { .. }));
    assert_eq!(next_event(&mut first).await, Event::Replaced);
    assert_eq!(first.next().await, None, "the replaced client stops");
}

#[tokio::test]
async fn go_away_moves_the_client_to_another_endpoint_and_nothing_is_lost() {
    let (store, redis) = new_store(StoreKind::Redis).await;
    let a = start_on_store(store.clone(), redis, "node-a", |_| {}, 0).await;
    let b = start_on_store(store, None, "node-b", |_| {}, 0).await;
    let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("gus", 3600)).expect("mint"));
    let endpoints = vec![Endpoint::Tcp(a.tcp), Endpoint::Tcp(b.tcp)];
    let mut client = Client::start(ClientOptions::new(endpoints, "gus-phone", token));
    match next_event(&mut client).await {
        Event::Connected { node_id, .. } => assert_eq!(node_id, "node-a"),
        other => panic!("{other:?}"),
    }
    a.push_to("gus-phone", json!(1)).await;
    assert_eq!(next_push_seq(&mut client).await, 1);
    a.stop();
    assert_eq!(
        next_event(&mut client).await,
        Event::Disconnected {
            reason: "go_away".into()
        }
    );
    // Pushed through node B's API while the client moves over.
    b.push_to("gus-phone", json!(2)).await;
    loop {
        match next_event(&mut client).await {
            Event::Connected { node_id, .. } => {
                assert_eq!(node_id, "node-b", "the next endpoint is tried after go_away");
                break;
            }
            Event::Disconnected { .. } => continue,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(next_push_seq(&mut client).await, 2);
}

/// A node whose service `svc` calls `backend`.
async fn node_with_backend(kind: StoreKind, backend: &common::backend::Backend) -> Node {
    let mut upstream = duplex_node::config::UpstreamConfig::default();
    upstream.services.insert(
        "svc".into(),
        duplex_node::config::ServiceConfig {
            endpoints: vec![duplex_node::config::EndpointConfig {
                url: backend.url(),
                weight: 1,
            }],
            try_timeout_ms: 8_000,
            ..Default::default()
        },
    );
    let (store, redis) = new_store(kind).await;
    start_with_upstream(store, redis, "sdk-node", |_| {}, 0, upstream).await
}

#[tokio::test]
async fn uploads_and_requests_survive_a_reconnect_and_reach_the_backend_once() {
    use common::backend::{Backend, Mode};
    use duplex_shared::protocol::{Request, Upload};
    for kind in [StoreKind::Memory, StoreKind::Redis] {
        let backend = Backend::start().await;
        let node = node_with_backend(kind, &backend).await;
        let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("ann", 3600)).expect("mint"));
        let mut options = ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "ann-phone", token);
        options.backoff_min = Duration::from_millis(10);
        options.backoff_max = Duration::from_millis(50);
        let mut client = Client::start(options);
        assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
        let upload = |body: &str| Upload {
            id: 0,
            service: "svc".into(),
            path: "/events".into(),
            headers: Default::default(),
            body: body.to_owned().into(),
        };
        let ack = client.upload(upload("first")).await.expect("upload");
        assert_eq!((ack.status, ack.spooled), (200, false));

        // The backend is slow; the connection is kicked while both calls wait.
        backend.set(Mode::Slow(Duration::from_millis(600)));
        let request = Request {
            id: 0,
            service: "svc".into(),
            method: "GET".into(),
            path: "/orders/1".into(),
            headers: Default::default(),
            body: Default::default(),
            timeout_ms: 0,
        };
        let (upload_done, reply_done) = {
            let calls = async {
                tokio::join!(
                    tokio::time::timeout(Duration::from_secs(10), client.upload(upload("second"))),
                    tokio::time::timeout(Duration::from_secs(10), client.request(request)),
                )
            };
            let kick = async {
                eventually("both calls at the backend", || async { backend.count() == 3 }).await;
                assert_eq!(node.delete("/v1/clients/ann-phone").await.0, 200);
            };
            tokio::join!(calls, kick).0
        };
        let ack = upload_done.expect("in time").expect("upload after the reconnect");
        assert_eq!(ack.status, 200);
        let reply = reply_done.expect("in time").expect("reply after the reconnect");
        assert_eq!((reply.status, reply.body.as_ref()), (200, &b"{\"slow\":true}"[..]));
        assert_eq!(
            backend.count(),
            3,
            "resent calls were deduplicated by the server ({kind:?})"
        );
    }
}

#[tokio::test]
async fn with_explicit_acks_unacked_pushes_come_again_after_a_reconnect() {
    for kind in [StoreKind::Memory, StoreKind::Redis] {
        let node = start(kind, |_| {}).await;
        let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("eve", 3600)).expect("mint"));
        let mut options = ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "eve-phone", token);
        options.auto_ack = false;
        options.backoff_min = Duration::from_millis(10);
        options.backoff_max = Duration::from_millis(50);
        let mut client = Client::start(options);
        assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
        node.push_to("eve-phone", json!(1)).await;
        node.push_to("eve-phone", json!(2)).await;
        assert_eq!(next_push_seq(&mut client).await, 1);
        assert_eq!(next_push_seq(&mut client).await, 2);
        // Only the first was processed; nothing is acked until the app says so.
        assert_eq!(node.get("/v1/clients/eve-phone").await.1["last_acked_seq"], 0);
        client.ack(1).await.expect("ack");
        eventually("ack 1 stored", || async {
            node.get("/v1/clients/eve-phone").await.1["last_acked_seq"] == 1
        })
        .await;
        assert_eq!(node.delete("/v1/clients/eve-phone").await.0, 200);
        assert_eq!(
            next_push_seq(&mut client).await,
            2,
            "the unacked push comes again after the reconnect, the acked one does not ({kind:?})"
        );
        client.ack(2).await.expect("ack");
        eventually("ack 2 stored", || async {
            node.get("/v1/clients/eve-phone").await.1["last_acked_seq"] == 2
        })
        .await;
    }
}

#[tokio::test]
async fn an_expired_token_is_replaced_at_once_from_the_provider() {
    let node = start(StoreKind::Memory, |_| {}).await;
    let calls = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let counted = calls.clone();
    // The first token the app holds has expired; the provider's next one is fresh.
    let token = Arc::new(move || {
        let mut claims = dev_claims("ida", 3600);
        if counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            claims.exp -= 3600 + 600;
        }
        mint_hs256(SECRET, &claims).expect("mint")
    });
    let mut options = ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "ida-phone", token);
    // A backoff this long would show: the refresh must not wait for it.
    options.backoff_min = Duration::from_secs(60);
    options.backoff_max = Duration::from_secs(60);
    let mut client = Client::start(options);
    match next_event(&mut client).await {
        Event::Disconnected { reason } => assert!(reason.contains("token_expired"), "{reason}"),
        other => panic!("expected the expired token to be refused, got {other:?}"),
    }
    let connected = tokio::time::timeout(Duration::from_secs(2), next_event(&mut client))
        .await
        .map(Some)
        .expect("reconnected at once with a fresh token");
    assert!(matches!(connected, Some(Event::Connected { .. })), "{connected:?}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_upload_made_during_an_outage_is_delivered_once_after_reconnect_and_calls_time_out() {
    use common::backend::{Backend, Mode};
    use duplex_client::CallError;
    use duplex_shared::protocol::{Request, Upload};
    for kind in [StoreKind::Memory, StoreKind::Redis] {
        let backend = Backend::start().await;
        let node = node_with_backend(kind, &backend).await;
        let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("lou", 3600)).expect("mint"));
        let mut options = ClientOptions::new(vec![Endpoint::Tcp(node.tcp)], "lou-phone", token);
        // The server advises reconnecting within 1 s; calls wait up to 3 s.
        options.call_timeout = Duration::from_secs(3);
        let mut client = Client::start(options);
        assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
        assert_eq!(node.delete("/v1/clients/lou-phone").await.0, 200);
        assert!(matches!(next_event(&mut client).await, Event::Disconnected { .. }));
        // Offline now (backing off): the upload waits for the next connection.
        let upload = Upload {
            id: 0,
            service: "svc".into(),
            path: "/events".into(),
            headers: Default::default(),
            body: "offline".into(),
        };
        let ack = client.upload(upload).await.expect("acked after the reconnect");
        assert_eq!(ack.status, 200);
        assert_eq!(backend.count(), 1, "{kind:?}");
        assert_eq!(backend.hits()[0].body.as_ref(), b"offline");

        // A reply later than the call timeout ends the call with a timeout error.
        backend.set(Mode::Slow(Duration::from_secs(5)));
        let request = Request {
            id: 0,
            service: "svc".into(),
            method: "GET".into(),
            path: "/slow".into(),
            headers: Default::default(),
            body: Default::default(),
            timeout_ms: 0,
        };
        assert_eq!(client.request(request).await, Err(CallError::Timeout));
    }
}

/// A TCP forwarder to `to` that refuses connections (accepts and closes)
/// while `open` is false: holds a client off a node for as long as a test needs.
async fn gate(to: std::net::SocketAddr, open: Arc<std::sync::atomic::AtomicBool>) -> std::net::SocketAddr {
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            if !open.load(std::sync::atomic::Ordering::SeqCst) {
                continue;
            }
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// A message that reached the app as an OS notification while the socket was
/// down is acked but not handed over when the socket brings it; a
/// notification for a message the socket handed over already is not new.
#[tokio::test]
async fn a_message_the_app_was_notified_of_is_not_handed_over_again() {
    for kind in [StoreKind::Memory, StoreKind::Redis] {
        let node = start(kind, |_| {}).await;
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let through = gate(node.tcp, open.clone()).await;
        let token = Arc::new(|| mint_hs256(SECRET, &dev_claims("noa", 3600)).expect("mint"));
        let mut options = ClientOptions::new(vec![Endpoint::Tcp(through)], "noa-phone", token);
        options.backoff_min = Duration::from_millis(10);
        options.backoff_max = Duration::from_millis(50);
        let mut client = Client::start(options);
        assert!(matches!(next_event(&mut client).await, Event::Connected { .. }));
        let first = node.push_to("noa-phone", json!(1)).await;
        let first_id = first["message_id"].as_str().expect("id").to_owned();
        let got = loop {
            match next_event(&mut client).await {
                Event::Push(p) => break p,
                _ => continue,
            }
        };
        assert_eq!(got.msg_id, first_id);
        assert!(!client.notified(&first_id), "the socket brought it first");

        // The socket is down (and kept down) while a push is made and its
        // notification reaches the app.
        open.store(false, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(node.delete("/v1/clients/noa-phone").await.0, 200);
        assert!(matches!(next_event(&mut client).await, Event::Disconnected { .. }));
        let second = node.push_to("noa-phone", json!(2)).await;
        let second_id = second["message_id"].as_str().expect("id").to_owned();
        assert!(client.notified(&second_id), "new to the app");
        assert!(!client.notified(&second_id), "a second notification is not");
        open.store(true, std::sync::atomic::Ordering::SeqCst);
        loop {
            match next_event(&mut client).await {
                Event::Connected { .. } => break,
                Event::Disconnected { .. } => continue,
                other => panic!("{other:?}"),
            }
        }
        node.push_to("noa-phone", json!(3)).await;
        assert_eq!(
            next_push_seq(&mut client).await,
            3,
            "the notified message (seq 2) was not handed over ({kind:?})"
        );
        eventually("the notified message acked", || async {
            node.get("/v1/clients/noa-phone").await.1["last_acked_seq"] == 3
        })
        .await;
    }
}
