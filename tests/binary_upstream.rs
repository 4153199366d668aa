//! The `duplex` binary with a backend service in its config file: requests
//! reach a real backend, and the admin API isolates and recovers endpoints.

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::process::*;
use duplex_client::Connection;
use duplex_shared::protocol::{Frame, Reply, Request};

const ADMIN_TOKEN: &str = "admin-token-for-the-binary-test";

async fn ask(conn: &mut Connection, id: u64) -> Reply {
    conn.send(&Frame::Request(Request {
        id,
        service: "orders".into(),
        method: "GET".into(),
        path: "/orders/1".into(),
        headers: Default::default(),
        body: Default::default(),
        timeout_ms: 0,
    }))
    .await
    .expect("send");
    let frame = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("a reply within 5 s")
        .expect("readable");
    match frame {
        Some(Frame::Reply(r)) => {
            conn.send(&Frame::Ack(duplex_shared::protocol::Ack { id: r.seq, seq: r.seq }))
                .await
                .expect("ack");
            r
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[tokio::test]
async fn requests_reach_the_configured_backend_and_the_admin_api_isolates_it() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("duplex.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}/api\" }}]\npath_prefixes = [\"/orders\"]\n",
            backend.url()
        ),
    )
    .expect("write config");
    let run = start(&["--config", config.to_str().expect("path")]);
    let admin = format!("http://{}", run.admin);
    let http = reqwest::Client::new();

    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    let r = ask(&mut conn, 1).await;
    assert_eq!((r.id, r.status), (1, 200));
    assert_eq!(backend.hits()[0].target, "/api/orders/1");

    let unauthorized = http
        .post(format!("{admin}/admin/v1/pools/orders/endpoints/0/isolate"))
        .send()
        .await
        .expect("admin");
    assert_eq!(unauthorized.status(), 401);
    let isolate = http
        .post(format!("{admin}/admin/v1/pools/orders/endpoints/0/isolate"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(isolate.status(), 200);
    let pools: serde_json::Value = http
        .get(format!("{admin}/admin/v1/pools"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin")
        .json()
        .await
        .expect("json");
    assert_eq!(pools["pools"]["orders"][0]["isolated"], true, "{pools}");

    // The only endpoint is isolated: the request fails fast with a 503 reply, nothing reaches it.
    let r = ask(&mut conn, 2).await;
    assert_eq!((r.status, r.headers["x-duplex-error"].as_str()), (503, "unavailable"));
    assert_eq!(backend.count(), 1);
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("duplex_backend_unavailable_total{service=\"orders\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("duplex_backend_call_seconds_count{service=\"orders\"} 1"));
    let down = format!(
        "duplex_backend_endpoint_up{{service=\"orders\",endpoint=\"{}/api\"}} 0",
        backend.url()
    );
    let mut shown = metrics.contains(&down);
    for _ in 0..100 {
        if shown {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let text = http.get(format!("{admin}/metrics")).send().await.expect("metrics");
        shown = text.text().await.expect("text").contains(&down);
    }
    assert!(shown, "an isolated endpoint shows as down");

    let unknown = http
        .post(format!("{admin}/admin/v1/pools/billing/endpoints/0/recover"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(unknown.status(), 404);
    let recover = http
        .post(format!("{admin}/admin/v1/pools/orders/endpoints/0/recover"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("admin");
    assert_eq!(recover.status(), 200);
    assert_eq!(ask(&mut conn, 3).await.status, 200);
    assert_eq!(backend.count(), 2);

    // Nodes, client lookup and kick, all behind the admin token.
    let get = |path: &str| http.get(format!("{admin}{path}")).bearer_auth(ADMIN_TOKEN).send();
    let nodes: serde_json::Value = get("/admin/v1/nodes").await.expect("nodes").json().await.expect("json");
    assert_eq!(nodes["nodes"][0]["connections"]["tcp"], 1, "{nodes}");
    let client: serde_json::Value = get("/admin/v1/clients/phone-1")
        .await
        .expect("client")
        .json()
        .await
        .expect("json");
    assert_eq!(
        (client["online"].clone(), client["pending"].clone()),
        (true.into(), 0.into()),
        "{client}"
    );
    let no_token = http
        .get(format!("{admin}/admin/v1/clients/phone-1"))
        .send()
        .await
        .expect("client");
    assert_eq!(no_token.status(), 401);
    let kicked = http
        .delete(format!("{admin}/admin/v1/clients/phone-1"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("kick");
    assert_eq!(kicked.status(), 200);
    let frame = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("in time")
        .expect("readable");
    assert!(
        matches!(frame, Some(Frame::Kicked(ref k)) if k.reason == "admin"),
        "{frame:?}"
    );
    // The admin API is not on the public push port.
    let public = http
        .get(format!("http://{}/admin/v1/nodes", run.push))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("push port");
    assert_eq!(public.status(), 404);
}
