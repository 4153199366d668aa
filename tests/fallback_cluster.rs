//! The push fallback in split mode on Redis: the schedule is in the store,
//! so a fallback outlives the downstream node that stored its push. Two
//! downstream nodes share Redis; the one that answered a push asking for a
//! fallback in 3 s is SIGKILLed at once, and the other sends the
//! notification when it comes due, once.

mod common;

use std::time::Duration;

use common::fake_fcm::*;
use common::process::*;
use duplex_testkit::{eventually, TestRedis};
use serde_json::json;

#[tokio::test]
async fn a_fallback_outlives_the_node_that_scheduled_it() {
    let redis = TestRedis::start().expect("redis-server");
    let (fcm_url, fcm) = start_fake().await;
    let dir = tempfile::tempdir().expect("dir");
    let account = service_account(dir.path(), &fcm_url);
    let config = config_file(&format!(
        "[downstream.fallback]\n\n[downstream.fallback.fcm]\nservice_account_file = \"{}\"\nendpoint = \"{fcm_url}\"\n",
        account.display()
    ));
    let node = |id: &str| {
        start_tier(
            "downstream",
            &["--redis", &redis.url(), "--node-id", id, "--config", &config.path],
        )
    };
    let (mut one, two) = (node("down-1"), node("down-2"));
    register(one.push(), "away", "fcm-token-away").await;
    let pushed = push(one.push(), "away", json!({"after_ms": 3000, "title": "Later"})).await;
    one.sigkill();
    let started = std::time::Instant::now();
    let id = pushed["messages"][0]["message_id"].as_str().expect("id").to_owned();

    eventually("the surviving node sent the fallback", || {
        let sent = fcm.lock().expect("fake").sent.len();
        async move { sent >= 1 }
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(2_000),
        "not before it was due"
    );
    let sent = fcm.lock().expect("fake").sent.clone();
    assert_eq!(sent[0]["token"], "fcm-token-away");
    assert_eq!(sent[0]["notification"]["title"], "Later");
    assert_eq!(sent[0]["data"]["duplex_message_id"], id.as_str());
    eventually("the message status shows the fallback", || {
        let url = format!("http://{}/v1/messages/{id}", two.push());
        async move { get_json(url).await["fallback"] == "fcm:sent" }
    })
    .await;
    // Several more looks by the surviving node: it went once.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(fcm.lock().expect("fake").sent.len(), 1);
}
