//! The admin API as one deployment-wide API, over HTTP through the binary:
//! in split mode on Redis, an access-only node answers pools, routing and
//! client lookups by forwarding to the nodes that run those tiers, sums the
//! whole deployment's counters, lists a user's clients; a read-only token
//! reads everything there and changes nothing, locally or forwarded.

mod common;

use common::backend::Backend;
use common::process::*;
use duplex_client::Connection;
use duplex_testkit::{eventually, TestRedis};
use reqwest::Method;
use serde_json::json;

const ADMIN: &str = "admin-token-for-the-cluster-test";
const READER: &str = "read-only-token-for-the-cluster-test";

fn config(backend: &Backend) -> ConfigFile {
    config_file(&format!(
        "[admin]\ntoken = \"{ADMIN}\"\nread_token = \"{READER}\"\n\n[registry]\ninternal_secret = \"internal-secret-for-the-cluster-test\"\n\n[upstream.services.orders]\nendpoints = [{{ url = \"{}\" }}]\n",
        backend.url()
    ))
}

fn node(tier: &str, redis: &TestRedis, id: &str, config: &ConfigFile) -> TierNode {
    start_tier(
        tier,
        &["--redis", &redis.url(), "--node-id", id, "--config", &config.path],
    )
}

#[tokio::test]
async fn any_node_answers_for_the_whole_deployment_and_a_reader_changes_nothing() {
    let redis = TestRedis::start().expect("redis-server");
    let backend = Backend::start().await;
    let config = config(&backend);
    let access = node("access", &redis, "edge-1", &config);
    let upstream = node("upstream", &redis, "up-1", &config);
    let down = node("downstream", &redis, "down-1", &config);
    let http = reqwest::Client::new();
    let admin = |path: &str| format!("http://{}{path}", access.admin);
    // Every node is in the registry before the access node can reach them.
    eventually("three nodes registered", || {
        let http = http.clone();
        let url = admin("/admin/v1/nodes");
        async move {
            call_json(&http, Method::GET, url, Some(ADMIN)).await.1["nodes"]
                .as_array()
                .map_or(0, Vec::len)
                == 3
        }
    })
    .await;

    // Roles.
    let (status, who) = call_json(&http, Method::GET, admin("/admin/v1/whoami"), Some(READER)).await;
    assert_eq!((status, who["role"].as_str()), (200, Some("read")));
    let (status, who) = call_json(&http, Method::GET, admin("/admin/v1/whoami"), Some(ADMIN)).await;
    assert_eq!((status, who["role"].as_str()), (200, Some("admin")));
    assert_eq!(
        call_json(
            &http,
            Method::GET,
            admin("/admin/v1/whoami"),
            Some("wrong-token-wrong-token")
        )
        .await
        .0,
        401
    );

    // Upstream's pools and routing, from the access node, for both roles.
    for token in [ADMIN, READER] {
        let answer = http
            .get(admin("/admin/v1/pools"))
            .bearer_auth(token)
            .send()
            .await
            .expect("pools");
        assert_eq!(answer.status(), 200);
        assert_eq!(
            answer
                .headers()
                .get("x-duplex-answered-by")
                .and_then(|v| v.to_str().ok()),
            Some("up-1")
        );
        let pools: serde_json::Value = answer.json().await.expect("json");
        assert_eq!(pools["pools"]["orders"][0]["isolated"], false, "{pools}");
        let (status, routing) = call_json(&http, Method::GET, admin("/admin/v1/routing"), Some(token)).await;
        assert_eq!(status, 200);
        assert!(routing["services"]["orders"].is_object(), "{routing}");
    }
    // A reader's change is refused by the node it reached; nothing changed.
    let isolate = admin("/admin/v1/pools/orders/endpoints/0/isolate");
    let (status, refusal) = call_json(&http, Method::POST, isolate.clone(), Some(READER)).await;
    assert_eq!((status, refusal["code"].as_str()), (403, Some("forbidden")));
    let (_, pools) = call_json(&http, Method::GET, admin("/admin/v1/pools"), Some(ADMIN)).await;
    assert_eq!(pools["pools"]["orders"][0]["isolated"], false);
    // The admin's change goes through, forwarded.
    let (status, done) = call_json(&http, Method::POST, isolate, Some(ADMIN)).await;
    assert_eq!((status, done["isolated"].as_bool()), (200, Some(true)), "{done}");
    let (_, pools) = call_json(&http, Method::GET, admin("/admin/v1/pools"), Some(READER)).await;
    assert_eq!(pools["pools"]["orders"][0]["isolated"], true);

    // A routing change far over the admin body bound (256 KiB) is refused on the node it
    // reached (413, or the connection cut while the body is still being sent), never forwarded.
    let before = call_json(&http, Method::GET, admin("/admin/v1/routing"), Some(ADMIN))
        .await
        .1;
    // Its own client: the node cuts that connection, which must not be reused for the next calls.
    let huge = reqwest::Client::new()
        .put(admin("/admin/v1/routing/services/orders"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await;
    if let Ok(answer) = huge {
        assert_eq!(answer.status().as_u16(), 413);
        assert!(answer.headers().get("x-duplex-answered-by").is_none());
    }
    assert_eq!(
        call_json(&http, Method::GET, admin("/admin/v1/routing"), Some(ADMIN))
            .await
            .1,
        before
    );

    // Clients: lookup (downstream) and a user's clients (the store), from the access node.
    let mut conn = Connection::tcp(access.tcp()).await.expect("tcp");
    conn.handshake(&mint("alice"), "phone-1", 0).await.expect("handshake");
    let (status, client) = call_json(&http, Method::GET, admin("/admin/v1/clients/phone-1"), Some(READER)).await;
    assert_eq!(
        (status, client["online"].as_bool(), client["node_id"].as_str()),
        (200, Some(true), Some("edge-1"))
    );
    let (status, user) = call_json(&http, Method::GET, admin("/admin/v1/users/alice/clients"), Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(
        user["clients"],
        json!([{"client_id": "phone-1", "online": true, "node_id": "edge-1"}])
    );
    assert_eq!(
        call_json(&http, Method::DELETE, admin("/admin/v1/clients/phone-1"), Some(READER))
            .await
            .0,
        403
    );

    // Totals: the downstream node delivers, the access node's answer counts it.
    for _ in 0..3 {
        push_arrives_live(down.push.expect("push API"), "phone-1", &mut conn).await;
    }
    let (status, totals) = call_json(&http, Method::GET, admin("/admin/v1/totals"), Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(
        (totals["nodes"].as_u64(), totals["answered"].as_u64()),
        (Some(3), Some(3)),
        "{totals}"
    );
    assert!(totals["totals"]["pushes_delivered"].as_f64() >= Some(3.0), "{totals}");
    assert_eq!(totals["totals"]["connections"].as_f64(), Some(1.0), "{totals}");
    let (_, alone) = call_json(&http, Method::GET, admin("/admin/v1/totals?scope=node"), Some(READER)).await;
    assert_eq!(alone["totals"]["pushes_delivered"].as_f64(), Some(0.0), "{alone}");

    // The admin kicks, forwarded to the downstream node.
    let (status, _) = call_json(&http, Method::DELETE, admin("/admin/v1/clients/phone-1"), Some(ADMIN)).await;
    assert_eq!(status, 200);

    // A lookup lists what waits for the client's ack.
    let pushed = push_hi(down.push.expect("push API"), "phone-2").await;
    let (status, away) = call_json(&http, Method::GET, admin("/admin/v1/clients/phone-2"), Some(READER)).await;
    assert_eq!(status, 200);
    assert_eq!(
        away["waiting"][0]["message_id"], pushed["messages"][0]["message_id"],
        "{away}"
    );
    assert_eq!(away["waiting"][0]["state"], "queued", "{away}");

    // The internal listener's forwarded admin calls need the internal secret.
    let internal = upstream
        .internal
        .expect("the upstream node printed its internal address");
    let forged = http
        .get(format!("http://{internal}/internal/v1/admin/admin/v1/pools"))
        .header("x-duplex-admin-role", "admin")
        .send()
        .await
        .expect("call");
    assert_eq!(forged.status().as_u16(), 401);
}
