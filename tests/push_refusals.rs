//! What the push API refuses, and that a refused push stores nothing, on both stores.

#[macro_use]
mod common;

use common::*;
use serde_json::json;

/// While Redis does not answer (SIGSTOP), pushes are refused at once with
/// `503 store_unavailable` instead of each waiting out the store timeouts;
/// once it answers again they are accepted again.
#[tokio::test]
async fn pushes_are_refused_at_once_while_redis_is_unreachable() {
    let node = start(StoreKind::Redis, |_| {}).await;
    node.push_to("r1", json!(1)).await;
    let pid = node.redis_pid().expect("redis").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    };
    signal("-STOP");
    let push = json!({"client_ids": ["r1"], "payload": 2});
    // The first calls find out (each within the store's timeouts)...
    let (status, body) = node.post("/v1/push", &push).await;
    assert_eq!(
        (status, body["code"].clone()),
        (503, json!("store_unavailable")),
        "{body}"
    );
    // ...then every call is answered at once, far within the 2 s response timeout.
    let mut slowest = std::time::Duration::ZERO;
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let (status, body) = node.post("/v1/push", &push).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(
            (status, body["code"].clone()),
            (503, json!("store_unavailable")),
            "{body}"
        );
    }
    signal("-CONT");
    assert!(
        slowest < std::time::Duration::from_millis(1_000),
        "a refusal took {slowest:?}"
    );
    eventually("pushes are accepted again", || async {
        node.post("/v1/push", &push).await.0 == 202
    })
    .await;
}

async fn cap_overflow_refuses_new_pushes_with_429(kind: StoreKind) {
    let node = start(kind, |c| c.queue_max_messages = 2).await;
    node.push_to("i1", json!(1)).await;
    node.push_to("i1", json!(2)).await;
    let (status, body) = node
        .post("/v1/push", &json!({"client_ids": ["i1"], "payload": 3}))
        .await;
    assert_eq!((status, body["code"].clone()), (429, json!("queue_full")), "{body}");
    // In a batch the full queue refuses its item alone, answered in place.
    let batch = json!({"pushes": [{"client_ids": ["i2"], "payload": 1}, {"client_ids": ["i1"], "payload": 3}]});
    let (status, body) = node.post("/v1/push/batch", &batch).await;
    assert_eq!(status, 202, "{body}");
    let stored = &body["results"][0];
    assert_eq!(
        (
            stored["status"].clone(),
            stored["messages"][0]["client_id"].clone(),
            stored["messages"][0]["state"].clone()
        ),
        (json!(202), json!("i2"), json!("queued")),
        "{body}"
    );
    let refused = &body["results"][1];
    assert_eq!(
        (refused["status"].clone(), refused["code"].clone()),
        (json!(429), json!("queue_full")),
        "{body}"
    );
    assert!(refused["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    let mut conn = node.connect("i", "i1", 0).await;
    assert_eq!(
        json_payload(&recv_push(&mut conn).await),
        json!(1),
        "the oldest are kept"
    );
    assert_eq!(json_payload(&recv_push(&mut conn).await), json!(2));
    ack(&mut conn, 2).await;
    eventually("room after ack", || async {
        node.post("/v1/push", &json!({"client_ids": ["i1"], "payload": 4}))
            .await
            .0
            == 202
    })
    .await;
}

async fn bad_input_gets_4xx_and_stores_nothing(kind: StoreKind) {
    let node = start(kind, |c| c.max_payload_bytes = 1024).await;
    let cases: Vec<(&str, Option<&str>, u16, &str)> = vec![
        ("{not json", Some(API_KEY), 400, "bad_json"),
        (
            r#"{"client_ids":["j1"],"payload":1,"colour":"red"}"#,
            Some(API_KEY),
            400,
            "unknown_field",
        ),
        (r#"{"payload":1}"#, Some(API_KEY), 400, "empty_targets"),
        (
            r#"{"client_ids":[],"user_ids":[],"payload":1}"#,
            Some(API_KEY),
            400,
            "empty_targets",
        ),
        (r#"{"client_ids":["j1"]}"#, Some(API_KEY), 400, "bad_payload"),
        (
            r#"{"client_ids":["j1"],"payload_base64":"!!!"}"#,
            Some(API_KEY),
            400,
            "bad_base64",
        ),
        (
            r#"{"client_ids":["j1"],"payload":1,"ttl":0}"#,
            Some(API_KEY),
            400,
            "bad_ttl",
        ),
        (
            r#"{"client_ids":["j1"],"payload":1,"ttl":99999999}"#,
            Some(API_KEY),
            400,
            "bad_ttl",
        ),
        (
            r#"{"client_ids":["j 1"],"payload":1}"#,
            Some(API_KEY),
            400,
            "bad_client_id",
        ),
        (
            r#"{"client_ids":["j1"],"payload":1,"qos":2}"#,
            Some(API_KEY),
            400,
            "bad_qos",
        ),
        (r#"{"all":true,"payload":1}"#, Some(API_KEY), 400, "bad_target"),
        (r#"{"client_ids":["j1"],"payload":1}"#, None, 401, "unauthorized"),
        (
            r#"{"client_ids":["j1"],"payload":1}"#,
            Some("wrong-key-wrong-key-wrong"),
            401,
            "unauthorized",
        ),
    ];
    for (body, key, status, code) in cases {
        let (got, resp) = node.post_raw("/v1/push", body, key).await;
        assert_eq!(
            (got, resp["code"].as_str().unwrap_or("")),
            (status, code),
            "{body}: {resp}"
        );
        assert!(resp["message"].as_str().is_some_and(|m| !m.is_empty()), "{resp}");
    }
    let big = json!({"client_ids": ["j1"], "payload": "x".repeat(2000)});
    let (got, resp) = node.post("/v1/push", &big).await;
    assert_eq!((got, resp["code"].clone()), (413, json!("payload_too_large")));
    // A batch with one bad item stores none of its items.
    let batch =
        json!({"pushes": [{"client_ids": ["j1"], "payload": 1}, {"client_ids": ["j1"], "payload": 1, "ttl": 0}]});
    let (got, resp) = node.post("/v1/push/batch", &batch).await;
    assert_eq!((got, resp["code"].clone()), (400, json!("bad_ttl")), "{resp}");
    assert_eq!(node.get("/v1/clients/j1").await.1["pending"], 0, "nothing was stored");
    assert_eq!(node.get("/v1/messages/j1~1~00000000").await.0, 404);
    assert_eq!(node.get("/v1/messages/garbage").await.0, 404);
    assert_eq!(node.get("/v1/nowhere").await.0, 404);
    // A body over downstream.max_body_bytes (1 MiB by default): the documented JSON 413.
    let huge = format!(r#"{{"client_ids":["j1"],"payload":"{}"}}"#, "x".repeat(1_100_000));
    let (got, resp) = node.post_raw("/v1/push", &huge, Some(API_KEY)).await;
    assert_eq!((got, resp["code"].as_str()), (413, Some("body_too_large")), "{resp}");
    let (got, resp) = node.post_raw("/v1/push/batch", &huge, Some(API_KEY)).await;
    assert_eq!((got, resp["code"].as_str()), (413, Some("body_too_large")), "{resp}");
    assert_eq!(node.get("/v1/clients/j1").await.1["pending"], 0, "nothing was stored");
}

both_stores!(
    cap_overflow_refuses_new_pushes_with_429,
    bad_input_gets_4xx_and_stores_nothing,
);
