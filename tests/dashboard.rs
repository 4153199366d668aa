//! The web dashboard in a real headless browser (Debian's `chromium`, driven
//! over the DevTools protocol): the page loads, shows a connected client, and
//! an isolate click takes effect; in split mode an access node's page shows
//! the whole deployment to a read-only token, without controls.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::backend::Backend;
use common::process::*;
use duplex_client::Connection;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_TOKEN: &str = "admin-token-for-the-dashboard-test";

struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts headless chromium and returns it with its DevTools port.
async fn chromium() -> (Browser, u16) {
    let profile = tempfile::tempdir().expect("profile dir");
    let child = Command::new("chromium")
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--remote-debugging-address=127.0.0.1",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromium must be installed for this test: sudo apt-get install -y chromium");
    let browser = Browser {
        child,
        _profile: profile,
    };
    let file = browser._profile.path().join("DevToolsActivePort");
    for _ in 0..300 {
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.parse().ok()))
        {
            return (browser, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("chromium did not open its DevTools port within 15 s");
}

/// One DevTools page session.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    next_id: u64,
}

impl Page {
    async fn open(port: u16, url: &str) -> Page {
        let target: Value = reqwest::Client::new()
            // The page URL travels as the query: its `#` and `&` must not end it.
            .put(format!(
                "http://127.0.0.1:{port}/json/new?{}",
                url.replace('%', "%25").replace('#', "%23").replace('&', "%26")
            ))
            .send()
            .await
            .expect("new target")
            .json()
            .await
            .expect("target json");
        let ws_url = target["webSocketDebuggerUrl"].as_str().expect("debugger url");
        let (ws, _) = tokio_tungstenite::connect_async(ws_url).await.expect("devtools ws");
        Page { ws, next_id: 0 }
    }

    /// Evaluates `expression` in the page and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({"id": id, "method": "Runtime.evaluate",
            "params": {"expression": expression, "returnByValue": true, "awaitPromise": true}});
        self.ws.send(Message::text(call.to_string())).await.expect("send");
        for _ in 0..1000 {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.ws.next())
                .await
                .expect("devtools answer in time")
                .expect("devtools open")
                .expect("devtools message");
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(&t).expect("json");
                if v["id"] == id {
                    return v["result"]["result"]["value"].clone();
                }
            }
        }
        panic!("no answer to evaluation {id}");
    }

    /// Polls `expression` until it yields `want` (at most 10 s).
    async fn wait_for(&mut self, expression: &str, want: Value) {
        let mut got = Value::Null;
        for _ in 0..100 {
            got = self.eval(expression).await;
            if got == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let shown = self
            .eval("document.getElementById('error') && document.getElementById('error').textContent")
            .await;
        panic!("{expression} stayed {got}, wanted {want}; the page shows the error {shown}");
    }
}

#[tokio::test]
async fn the_dashboard_shows_a_connected_client_and_an_isolate_click_takes_effect() {
    let backend = Backend::start().await;
    let config = config_file(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}\" }}, {{ url = \"{}/b\" }}]\n",
        backend.url(),
        backend.url()
    ));
    let run = start(&["--config", &config.path]);
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");

    let (_browser, port) = chromium().await;
    let url = format!("http://{}/dashboard#token={ADMIN_TOKEN}&client=phone-1", run.admin);
    let mut page = Page::open(port, &url).await;
    page.wait_for("document.body && document.body.dataset.ready === 'true'", json!(true))
        .await;
    page.wait_for(
        "document.getElementById('client-online') && document.getElementById('client-online').textContent",
        json!("true"),
    )
    .await;
    page.wait_for("document.querySelectorAll('#nodes tr').length", json!(1))
        .await;
    assert_eq!(
        page.eval("document.querySelector('[data-state=\"orders/0\"]').textContent")
            .await,
        json!("up")
    );

    let clicked = page
        .eval("(() => { const b = document.querySelector('button[data-endpoint=\"orders/0\"][data-action=\"isolate\"]'); if (!b) return false; b.click(); return true; })()")
        .await;
    assert_eq!(clicked, json!(true));
    page.wait_for(
        "document.querySelector('[data-state=\"orders/0\"]').textContent",
        json!("isolated"),
    )
    .await;
    let pools = call_json(
        &reqwest::Client::new(),
        reqwest::Method::GET,
        format!("http://{}/admin/v1/pools", run.admin),
        Some(ADMIN_TOKEN),
    )
    .await
    .1;
    assert_eq!(pools["pools"]["orders"][0]["isolated"], true, "{pools}");
    assert_eq!(pools["pools"]["orders"][1]["isolated"], false, "{pools}");
}

const READ_TOKEN: &str = "read-only-token-for-the-dashboard";

/// Split mode on Redis, the access node's dashboard opened with the read-only
/// token: it shows upstream's pools and the deployment's push rate (both from
/// other nodes), finds a user's clients, and offers no control.
#[tokio::test]
async fn an_access_nodes_dashboard_shows_the_deployment_to_a_read_only_token() {
    let redis = duplex_testkit::TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    let config = config_file(&format!(
        "[admin]\ntoken = \"{ADMIN_TOKEN}\"\nread_token = \"{READ_TOKEN}\"\n\n[registry]\ninternal_secret = \"internal-secret-for-the-dashboard\"\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}\" }}]\n",
        backend.url()
    ));
    let node = |tier: &str, id: &str| {
        start_tier(
            tier,
            &["--redis", &redis.url(), "--node-id", id, "--config", &config.path],
        )
    };
    let (access, _upstream, down) = (
        node("access", "edge-1"),
        node("upstream", "up-1"),
        node("downstream", "down-1"),
    );
    let mut conn = Connection::tcp(access.tcp()).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    let push_api = down.push.expect("push API");
    // Pushes keep flowing while the page watches (bounded: 60 s at most).
    let pushing = tokio::spawn(async move {
        for _ in 0..300 {
            push_arrives_live(push_api, "phone-1", &mut conn).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });

    let (_browser, port) = chromium().await;
    let url = format!("http://{}/dashboard#token={READ_TOKEN}&user=alice", access.admin);
    let mut page = Page::open(port, &url).await;
    page.wait_for("document.body && document.body.dataset.ready === 'true'", json!(true))
        .await;
    page.wait_for("document.body.dataset.role", json!("read")).await;
    page.wait_for(
        "document.querySelector('[data-state=\"orders/0\"]') && document.querySelector('[data-state=\"orders/0\"]').textContent",
        json!("up"),
    )
    .await;
    // Controls are not shown to a reader.
    assert_eq!(
        page.eval("getComputedStyle(document.querySelector('button[data-endpoint=\"orders/0\"]')).display")
            .await,
        json!("none")
    );
    assert_eq!(
        page.eval("getComputedStyle(document.getElementById('save-service')).display")
            .await,
        json!("none")
    );
    // The user's clients, from the store.
    page.wait_for(
        "document.querySelector('#user-table tbody tr td:nth-child(2)') && document.querySelector('#user-table tbody tr td:nth-child(2)').textContent",
        json!("true"),
    )
    .await;
    // Pushes delivered by the downstream node show on the access node's page.
    page.wait_for(
        "document.getElementById('rate-nodes') && document.getElementById('rate-nodes').textContent",
        json!("3 of 3 nodes"),
    )
    .await;
    page.wait_for(
        "Number(document.getElementById('rate-pushes') && document.getElementById('rate-pushes').textContent) > 0",
        json!(true),
    )
    .await;
    assert_eq!(
        page.eval("document.querySelectorAll('#legend span').length").await,
        json!(4)
    );
    pushing.abort();
}
