//! The `duplex` binary with a backend service in its config file: requests
//! reach a real backend, and the admin API isolates and recovers endpoints.

mod common;

use std::time::Duration;

use common::backend::Backend;
use common::process::*;
use duplex_client::Connection;
use duplex_shared::protocol::{Frame, Reply, Request};
use reqwest::Method;

const ADMIN_TOKEN: &str = "admin-token-for-the-binary-test";

async fn ask(conn: &mut Connection, id: u64) -> Reply {
    ask_service(conn, id, "orders").await
}

async fn ask_service(conn: &mut Connection, id: u64, service: &str) -> Reply {
    ask_with(conn, id, service, "GET", "/orders/1").await
}

/// The admin listener's `/metrics` text (`admin`: `http://host:port`).
async fn metrics_text(http: &reqwest::Client, admin: &str) -> String {
    let response = http.get(format!("{admin}/metrics")).send().await.expect("metrics");
    response.text().await.expect("text")
}

#[tokio::test]
async fn requests_reach_the_configured_backend_and_the_admin_api_isolates_it() {
    let backend = Backend::start().await;
    let config = config_file(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}/api\" }}]\npath_prefixes = [\"/orders\"]\n",
        backend.url()
    ));
    let run = start(&["--config", &config.path]);
    let admin = format!("http://{}", run.admin);
    let http = reqwest::Client::new();

    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    let r = ask(&mut conn, 1).await;
    assert_eq!((r.id, r.status), (1, 200));
    assert_eq!(backend.hits()[0].target, "/api/orders/1");

    // The CLI sends one request or upload and prints the answer.
    // Async: the backend runs on this test's runtime and must keep answering.
    let cli = |extra: &[&str]| {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args([
            "client",
            "--url",
            &format!("tcp://{}", run.tcp),
            "--token",
            &mint("cli-user"),
        ])
        .args(extra);
        async move {
            let out = cmd.output().await.expect("duplex client");
            let line: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out.stderr)));
            (out.status.code(), line)
        }
    };
    let (code, reply) = cli(&["--request", "orders", "--path", "/orders/9?x=1"]).await;
    assert_eq!((code, reply["status"].clone()), (Some(0), 200.into()), "{reply}");
    assert_eq!(reply["body"]["path"], "/api/orders/9?x=1");
    let (code, ack) = cli(&["--upload", "orders", "--path", "/orders/new", "--body", "{\"a\":1}"]).await;
    assert_eq!(
        (code, ack["status"].clone(), ack["spooled"].clone()),
        (Some(0), 200.into(), false.into()),
        "{ack}"
    );
    assert_eq!(backend.hits().last().expect("hit").body.as_ref(), b"{\"a\":1}");
    assert_eq!(backend.count(), 3);
    let admin_call = |method, path: &str, token| call_json(&http, method, format!("{admin}{path}"), token);
    let isolate_path = "/admin/v1/pools/orders/endpoints/0/isolate";
    assert_eq!(admin_call(Method::POST, isolate_path, None).await.0, 401);
    assert_eq!(admin_call(Method::POST, isolate_path, Some(ADMIN_TOKEN)).await.0, 200);
    let (_, pools) = admin_call(Method::GET, "/admin/v1/pools", Some(ADMIN_TOKEN)).await;
    assert_eq!(pools["pools"]["orders"][0]["isolated"], true, "{pools}");

    // The only endpoint is isolated: the request fails fast with a 503 reply, nothing reaches it.
    let r = ask(&mut conn, 2).await;
    assert_eq!((r.status, r.headers["x-duplex-error"].as_str()), (503, "unavailable"));
    assert_eq!(backend.count(), 3);
    let metrics = metrics_text(&http, &admin).await;
    assert!(
        metrics.contains("duplex_backend_unavailable_total{service=\"orders\"} 1"),
        "{metrics}"
    );
    let endpoint = format!("{}/api", backend.url());
    assert!(
        metrics.contains(&format!(
            "duplex_backend_call_seconds_count{{service=\"orders\",endpoint=\"{endpoint}\"}} 3"
        )),
        "{metrics}"
    );
    assert!(metrics.contains(&format!(
        "duplex_backend_calls_total{{service=\"orders\",endpoint=\"{endpoint}\",outcome=\"ok\"}} 3"
    )));
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

    let recover = |service: &'static str| {
        admin_call(
            Method::POST,
            &format!("/admin/v1/pools/{service}/endpoints/0/recover"),
            Some(ADMIN_TOKEN),
        )
    };
    assert_eq!(recover("billing").await.0, 404);
    assert_eq!(recover("orders").await.0, 200);
    assert_eq!(ask(&mut conn, 3).await.status, 200);
    assert_eq!(backend.count(), 4);

    // Nodes, client lookup and kick, all behind the admin token.
    let (_, nodes) = admin_call(Method::GET, "/admin/v1/nodes", Some(ADMIN_TOKEN)).await;
    assert_eq!(nodes["nodes"][0]["connections"]["tcp"], 1, "{nodes}");
    // The ack of the last reply is sent just before; the node handles it on its own time.
    common::eventually("the acked replies leave the queue", || async {
        let (_, client) = admin_call(Method::GET, "/admin/v1/clients/phone-1", Some(ADMIN_TOKEN)).await;
        client["pending"] == 0
    })
    .await;
    let (_, client) = admin_call(Method::GET, "/admin/v1/clients/phone-1", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        (
            client["online"].clone(),
            client["pending"].clone(),
            client["last_acked_seq"].clone()
        ),
        (true.into(), 0.into(), 3.into()),
        "{client}"
    );
    assert_eq!(admin_call(Method::GET, "/admin/v1/clients/phone-1", None).await.0, 401);
    assert_eq!(
        admin_call(Method::DELETE, "/admin/v1/clients/phone-1", Some(ADMIN_TOKEN))
            .await
            .0,
        200
    );
    let frame = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("in time")
        .expect("readable");
    assert!(
        matches!(frame, Some(Frame::Kicked(ref k)) if k.reason == "admin"),
        "{frame:?}"
    );
    // The queue overview shows a client's backlog and the spools.
    let pushed = http
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth("duplex-dev-api-key")
        .json(&serde_json::json!({"client_ids": ["offline-1"], "payload": {"n": 1}}))
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 202);
    let (_, queues) = admin_call(Method::GET, "/admin/v1/queues?limit=5", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        queues["clients"]["top_pending"][0]["client_id"], "offline-1",
        "{queues}"
    );
    assert_eq!(queues["clients"]["top_pending"][0]["pending"], 1, "{queues}");
    assert_eq!(queues["spools"]["orders"], 0, "{queues}");
    // The admin API is not on the public push port.
    let public = call_json(
        &http,
        Method::GET,
        format!("http://{}/admin/v1/nodes", run.push),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(public.await.0, 404);
}

#[tokio::test]
async fn a_routing_change_takes_effect_at_once_and_survives_a_restart() {
    let redis = duplex_testkit::TestRedis::start().expect("redis-server");
    let (orders, billing) = (Backend::start().await, Backend::start().await);
    let config = config_file(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}\" }}]\n",
        orders.url()
    ));
    let args = ["--config", &config.path, "--redis", &redis.url()];
    let http = reqwest::Client::new();
    let run = start(&args);
    let admin = format!("http://{}", run.admin);
    let put = |name: &str, body: serde_json::Value| {
        http.put(format!("{admin}/admin/v1/routing/services/{name}"))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
    };
    let routing = || async {
        call_json(
            &http,
            Method::GET,
            format!("{admin}/admin/v1/routing"),
            Some(ADMIN_TOKEN),
        )
        .await
        .1
    };
    let before = routing().await;

    // Invalid changes are refused with a reason and change nothing.
    for bad in [
        serde_json::json!({"endpoints": [{"url": "ftp://127.0.0.1:1"}]}),
        serde_json::json!({"endpoints": []}),
        serde_json::json!({"endpoints": [{"url": billing.url()}], "no_such_key": 1}),
        serde_json::json!({"endpoints": [{"url": billing.url()}], "deadline_ms": 1, "try_timeout_ms": 5}),
    ] {
        let resp = put("billing", bad.clone()).await.expect("put");
        assert_eq!(resp.status(), 400, "{bad}");
        let body: serde_json::Value = resp.json().await.expect("json");
        assert_eq!(body["code"], "invalid_config", "{body}");
    }
    assert_eq!(routing().await, before);
    let unauthorized = http
        .put(format!("{admin}/admin/v1/routing/services/billing"))
        .json(&serde_json::json!({"endpoints": [{"url": billing.url()}]}))
        .send()
        .await
        .expect("put");
    assert_eq!(unauthorized.status(), 401);

    // A valid one serves at once, without a restart.
    let resp = put(
        "billing",
        serde_json::json!({"endpoints": [{"url": billing.url()}], "path_prefixes": ["/orders"]}),
    )
    .await
    .expect("put");
    assert_eq!(resp.status(), 200);
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    assert_eq!(ask_service(&mut conn, 1, "billing").await.status, 200);
    assert_eq!(billing.count(), 1);
    drop(conn);
    drop(run);

    // A restart keeps it (the change lives in the store).
    let run = start(&args);
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    assert_eq!(ask_service(&mut conn, 2, "billing").await.status, 200);
    assert_eq!(billing.count(), 2);
    assert_eq!(ask_service(&mut conn, 3, "orders").await.status, 200);
    let removed = format!("http://{}/admin/v1/routing/services/billing", run.admin);
    assert_eq!(
        call_json(&http, Method::DELETE, removed, Some(ADMIN_TOKEN)).await.0,
        200
    );
    conn.send(&Frame::Request(Request {
        id: 4,
        service: "billing".into(),
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
        .expect("in time")
        .expect("readable");
    assert!(
        matches!(frame, Some(Frame::Error(ref e)) if e.message.contains("unknown service")),
        "{frame:?}"
    );
    // A removed service's series go with it (its endpoint showed as up until the restart).
    let metrics = metrics_text(&http, &format!("http://{}", run.admin)).await;
    assert!(!metrics.contains("service=\"billing\""), "{metrics}");
    assert!(
        metrics.contains("duplex_backend_endpoint_up{service=\"orders\""),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_web_page_cannot_use_the_tokenless_admin_api() {
    let backend = Backend::start().await;
    let config = config_file(&format!(
        "[upstream.services.orders]\nendpoints = [{{ url = \"{}/api\" }}]\npath_prefixes = [\"/orders\"]\n",
        backend.url()
    ));
    let run = start(&["--config", &config.path]);
    let url = format!("http://{}/admin/v1/pools/orders/endpoints/0/isolate", run.admin);
    let http = reqwest::Client::new();
    let isolated = || async {
        let (_, pools) = call_json(&http, Method::GET, format!("http://{}/admin/v1/pools", run.admin), None).await;
        pools["pools"]["orders"][0]["isolated"].clone()
    };
    // A form or fetch from another origin, and a DNS-rebinding page (its own
    // name in Host, so same-origin to the browser): refused, nothing changed.
    let attacks: [&[(&str, &str)]; 4] = [
        &[("origin", "https://evil.example")],
        &[("sec-fetch-site", "cross-site")],
        &[("origin", "null")],
        &[("host", "evil.example"), ("origin", "http://evil.example")],
    ];
    for headers in attacks {
        let mut req = http.post(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.expect("post");
        assert_eq!(resp.status().as_u16(), 403, "{headers:?}");
        let body: serde_json::Value = resp.json().await.expect("json error");
        assert!(body["code"].is_string(), "{body}");
        assert_eq!(isolated().await, false, "{headers:?}");
    }
    // The operator's own tools still work on loopback without a token.
    assert_eq!(call_json(&http, Method::POST, url.clone(), None).await.0, 200);
    assert_eq!(isolated().await, true);
}
