//! Push tokens through the binary's push API: registered, renewed, listed,
//! removed; tokens of the wrong shape and calls without the API key refused,
//! nothing stored.

mod common;

use common::process::*;
use reqwest::Method;
use serde_json::{json, Value};

const KEY: &str = "duplex-dev-api-key";
const P256DH: &str = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM";
const AUTH: &str = "tBHItJI5svbpez7KI4CCXg";

async fn call(method: Method, url: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, url).json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("call");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn tokens_are_registered_listed_and_removed_and_bad_ones_refused() {
    let run = start(&[]);
    let url = format!("http://{}/v1/clients/phone-1/push-tokens", run.push);
    let fcm = json!({"provider": "fcm", "token": "dGVzdA:APA91bH-token_123", "app": "com.example.app"});
    assert_eq!(
        call(Method::PUT, &url, Some(KEY), fcm.clone()).await,
        (
            200,
            json!({"client_id": "phone-1", "provider": "fcm", "registered": true})
        )
    );
    let subscription = json!({"endpoint": "https://push.example.net/sub/1", "keys": {"p256dh": P256DH, "auth": AUTH}});
    let (status, _) = call(
        Method::PUT,
        &url,
        Some(KEY),
        json!({"provider": "webpush", "token": subscription}),
    )
    .await;
    assert_eq!(status, 200);
    // Registering the FCM token again renews it; nothing is duplicated.
    assert_eq!(call(Method::PUT, &url, Some(KEY), fcm.clone()).await.0, 200);
    let (status, listed) = call(Method::GET, &url, Some(KEY), Value::Null).await;
    assert_eq!(status, 200);
    let tokens = listed["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2, "{listed}");
    let of = |provider: &str| {
        tokens
            .iter()
            .find(|t| t["provider"] == provider)
            .cloned()
            .expect(provider)
    };
    assert_eq!(of("fcm")["app"], "com.example.app");
    assert!(
        of("fcm")["registered_at"].as_u64() >= of("webpush")["registered_at"].as_u64(),
        "{listed}"
    );
    let stored: Value = serde_json::from_str(of("webpush")["token"].as_str().expect("text")).expect("JSON text");
    assert_eq!(stored, subscription);

    // Hostile and broken input: refused with a code, nothing stored.
    for (body, why) in [
        (json!({"provider": "gcm", "token": "x"}), "unknown provider"),
        (json!({"provider": "apns", "token": "zz"}), "not hex"),
        (json!({"provider": "fcm", "token": "a b"}), "space"),
        (json!({"provider": "fcm", "token": "x".repeat(5000)}), "too long"),
        (
            json!({"provider": "webpush", "token": {"endpoint": "http://insecure.example/1", "keys": {"p256dh": P256DH, "auth": AUTH}}}),
            "not https",
        ),
        (
            json!({"provider": "fcm", "token": "t", "app": "no spaces allowed"}),
            "bad app",
        ),
    ] {
        let (status, answer) = call(Method::PUT, &url, Some(KEY), body).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (400, Some("bad_push_token")),
            "{why}: {answer}"
        );
    }
    let (status, answer) = call(Method::PUT, &url, Some(KEY), json!({"provider": "fcm"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(call(Method::PUT, &url, None, fcm.clone()).await.0, 401);
    assert_eq!(call(Method::GET, &url, Some("wrong-key"), Value::Null).await.0, 401);
    let other = format!("http://{}/v1/clients/bad%20id/push-tokens", run.push);
    assert_eq!(call(Method::PUT, &other, Some(KEY), fcm.clone()).await.0, 400);
    assert_eq!(
        call(Method::GET, &url, Some(KEY), Value::Null).await.1["tokens"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    let gone = json!({"provider": "fcm", "token": "dGVzdA:APA91bH-token_123"});
    assert_eq!(
        call(Method::DELETE, &url, Some(KEY), gone.clone()).await.1["removed"],
        true
    );
    assert_eq!(call(Method::DELETE, &url, Some(KEY), gone).await.1["removed"], false);
    let (_, listed) = call(Method::GET, &url, Some(KEY), Value::Null).await;
    assert_eq!(listed["tokens"][0]["provider"], "webpush", "{listed}");
}

/// The app registers its own token over the channel (`register_push`), with
/// the connection's client id; a malformed one gets `bad_push_token` and the
/// connection stays; the Rust SDK's `register_push` waits for the answer.
#[tokio::test]
async fn an_app_registers_its_token_over_the_channel() {
    use duplex_client::{Client, ClientOptions, Endpoint};
    use duplex_shared::protocol::{Frame, RegisterPush};

    let run = start(&[]);
    let mut conn = duplex_client::Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("rita"), "rita-phone", 0).await.expect("handshake");
    let register = |id: u64, provider: &str, token: &str| {
        Frame::RegisterPush(RegisterPush {
            id,
            provider: provider.into(),
            token: token.into(),
            app: Some("com.example.app".into()),
        })
    };
    conn.send(&register(5, "fcm", "rita-token-1")).await.expect("send");
    match next_frame(&mut conn).await {
        Some(Frame::PushRegistered(r)) => assert_eq!(r.id, 5),
        other => panic!("expected push_registered, got {other:?}"),
    }
    conn.send(&register(6, "apns", "zz not hex")).await.expect("send");
    match next_frame(&mut conn).await {
        Some(Frame::Error(e)) => {
            assert_eq!(
                (e.id, e.code.as_str(), e.retry, e.close),
                (Some(6), "bad_push_token", false, false)
            )
        }
        other => panic!("expected an error, got {other:?}"),
    }
    ping_pong(&mut conn).await;
    let url = format!("http://{}/v1/clients/rita-phone/push-tokens", run.push);
    let (_, listed) = call(Method::GET, &url, Some(KEY), Value::Null).await;
    assert_eq!(listed["tokens"][0]["token"], "rita-token-1", "{listed}");
    assert_eq!(listed["tokens"].as_array().map(Vec::len), Some(1));
    drop(conn);

    // Through the SDK.
    let token = mint("rita");
    let options = ClientOptions::new(
        vec![Endpoint::Tcp(run.tcp)],
        "rita-tablet",
        std::sync::Arc::new(move || token.clone()),
    );
    let client = Client::start(options);
    client
        .register_push("fcm", "rita-token-2", None)
        .await
        .expect("registered through the SDK");
    let url = format!("http://{}/v1/clients/rita-tablet/push-tokens", run.push);
    assert_eq!(
        call(Method::GET, &url, Some(KEY), Value::Null).await.1["tokens"][0]["token"],
        "rita-token-2"
    );
    match client.register_push("webpush", "{}", None).await {
        Err(duplex_client::CallError::Refused { code, retry, .. }) => {
            assert_eq!((code.as_str(), retry), ("bad_push_token", false))
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    client.close().await;
}
