//! The OS push fallback through the binary, against a fake FCM this test
//! runs on 127.0.0.1 that speaks FCM's HTTP v1 API: the OAuth2 JWT grant
//! (the assertion's RS256 signature checked with the service account's
//! public key) and `messages:send` (the access token checked). A client that
//! is offline when a push without `after_ms` is stored gets its notification
//! at once (with the message id in its data); a client that acks within its
//! push's `after_ms` gets none; a dead token (UNREGISTERED)
//! is removed; an FCM outage (503) is retried until it passes; the push
//! answers at once whatever FCM does.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use common::fake_fcm::*;
use common::process::*;
use duplex_client::Connection;
use duplex_shared::protocol::{Ack, Frame};
use duplex_testkit::eventually;
use serde_json::{json, Value};

#[tokio::test]
async fn unacked_pushes_fall_back_to_fcm_and_acked_ones_do_not() {
    let (fcm_url, fcm) = start_fake().await;
    let dir = tempfile::tempdir().expect("dir");
    let account = service_account(dir.path(), &fcm_url);
    let config = config_file(&format!(
        "[downstream.fallback]\nafter_ms = 60000\nmax_attempts = 4\n\n[downstream.fallback.fcm]\nservice_account_file = \"{}\"\nendpoint = \"{fcm_url}\"\n",
        account.display()
    ));
    let run = start(&["--config", &config.path]);

    // Offline client, no after_ms: the notification goes at once (the configured default,
    // a minute, is for clients that are connected but do not ack), with the message id.
    register(run.push, "away", "fcm-token-away").await;
    let pushed = push(
        run.push,
        "away",
        json!({"title": "Hello", "body": "You have a message", "collapse_key": "chat"}),
    )
    .await;
    let id = pushed["messages"][0]["message_id"].as_str().expect("id").to_owned();
    assert_eq!(pushed["messages"][0]["state"], "queued");
    eventually("the fallback reached FCM", || {
        let sent = fcm.lock().expect("fake").sent.len();
        async move { sent == 1 }
    })
    .await;
    let sent = fcm.lock().expect("fake").sent[0].clone();
    assert_eq!(sent["token"], "fcm-token-away");
    assert_eq!(
        sent["notification"],
        json!({"title": "Hello", "body": "You have a message"})
    );
    assert_eq!(sent["data"]["duplex_message_id"], id.as_str());
    assert_eq!(sent["android"]["collapse_key"], "chat");
    // The message's status tells what the fallback came to.
    eventually("the message status shows the fallback", || {
        let url = format!("http://{}/v1/messages/{id}", run.push);
        async move {
            let status = get_json(url).await;
            status["fallback"] == "fcm:sent" && status["fallback_at"].as_u64().is_some()
        }
    })
    .await;

    // Online client that acks at once: no notification.
    register(run.push, "here", "fcm-token-here").await;
    let mut conn = Connection::tcp(run.tcp).await.expect("tcp");
    conn.handshake(&mint("alice"), "here", 0).await.expect("handshake");
    push(run.push, "here", json!({"after_ms": 500})).await;
    let delivered = loop {
        match next_frame(&mut conn).await {
            Some(Frame::Push(p)) => break p,
            Some(_) => continue,
            None => panic!("no push"),
        }
    };
    conn.send(&Frame::Ack(Ack {
        id: 1,
        seq: delivered.seq,
    }))
    .await
    .expect("ack");
    ping_pong(&mut conn).await;

    // A dead token is removed; an outage is retried until FCM takes the notification.
    register(run.push, "gone", "fcm-token-dead").await;
    fcm.lock().expect("fake").dead.push("fcm-token-dead".into());
    push(run.push, "gone", json!({})).await;
    fcm.lock().expect("fake").failures = vec![503, 503];
    let started = std::time::Instant::now();
    push(run.push, "away", json!({"title": "Again"})).await;
    assert!(started.elapsed() < Duration::from_secs(2), "the push answered at once");
    eventually("the retried fallback got through", || {
        let titles: Vec<Value> = fcm
            .lock()
            .expect("fake")
            .sent
            .iter()
            .map(|m| m["notification"]["title"].clone())
            .collect();
        async move { titles.contains(&json!("Again")) }
    })
    .await;
    eventually("the dead token was removed", || {
        let url = format!("http://{}/v1/clients/gone/push-tokens", run.push);
        async move { get_json(url).await["tokens"].as_array().is_some_and(Vec::is_empty) }
    })
    .await;
    // The acked push's fallback comes due and finds the ack: nothing goes out for it.
    let metrics_url = format!("http://{}/metrics", run.admin);
    let wanted = [
        "duplex_fallback_total{provider=\"none\",outcome=\"acked_in_time\"} 1",
        "duplex_fallback_total{provider=\"fcm\",outcome=\"dead_token\"} 1",
        "duplex_fallback_total{provider=\"fcm\",outcome=\"retried\"} 2",
        "duplex_fallback_total{provider=\"fcm\",outcome=\"sent\"} 2",
    ];
    eventually("every fallback was counted", || {
        let url = metrics_url.clone();
        async move {
            let text = reqwest::get(url).await.expect("metrics").text().await.expect("text");
            wanted.iter().all(|line| text.contains(line))
        }
    })
    .await;
    let tokens: Vec<Value> = fcm
        .lock()
        .expect("fake")
        .sent
        .iter()
        .map(|m| m["token"].clone())
        .collect();
    assert!(!tokens.contains(&json!("fcm-token-here")), "{tokens:?}");
    assert_eq!(fcm.lock().expect("fake").grants, 1, "the access token is reused");
}

#[tokio::test]
async fn a_fallback_without_a_provider_or_on_qos_0_is_refused() {
    let run = start(&[]);
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth(KEY)
        .json(&json!({"client_ids": ["c"], "payload": 1, "fallback": {}}))
        .send()
        .await
        .expect("push");
    assert_eq!(answer.status(), 400);
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["code"], "fallback_unavailable", "{body}");
    let answer = reqwest::Client::new()
        .post(format!("http://{}/v1/push", run.push))
        .bearer_auth(KEY)
        .json(&json!({"client_ids": ["c"], "payload": 1, "qos": 0, "fallback": {}}))
        .send()
        .await
        .expect("push");
    let body: Value = answer.json().await.expect("json");
    assert_eq!(body["code"], "bad_fallback", "{body}");
}

const APNS_KEY: &str = include_str!("fixtures/apns-test-key.p8");
const APNS_PUBLIC: &str = include_str!("fixtures/apns-test-key.pub.pem");
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What the fake APNs and the fake push service took.
#[derive(Default)]
struct Received {
    apns: Vec<(String, HeaderMap, Value)>,
    webpush: Vec<(HeaderMap, Vec<u8>)>,
}

type Got = Arc<Mutex<Received>>;

/// APNs: HTTP/2 only, the provider token checked (ES256, kid, team), a dead token answered 410.
async fn apns(State(got): State<Got>, Path(token): Path<String>, request: axum::extract::Request) -> impl IntoResponse {
    if request.version() != axum::http::Version::HTTP_2 {
        return (
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            Json(json!({"reason": "not HTTP/2"})),
        );
    }
    let headers = request.headers().clone();
    let jwt = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bearer ").or_else(|| v.strip_prefix("Bearer ")))
        .unwrap_or_default()
        .to_owned();
    let key = jsonwebtoken::DecodingKey::from_ec_pem(APNS_PUBLIC.as_bytes()).expect("public key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(&jwt, &key, &validation);
    let trusted = decoded
        .as_ref()
        .is_ok_and(|d| d.header.kid.as_deref() == Some("KEYID12345") && d.claims["iss"] == "TEAM123456");
    if !trusted {
        return (StatusCode::FORBIDDEN, Json(json!({"reason": "InvalidProviderToken"})));
    }
    if token == "dead".repeat(16) {
        return (
            StatusCode::GONE,
            Json(json!({"reason": "Unregistered", "timestamp": 1})),
        );
    }
    let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.expect("body");
    let body: Value = serde_json::from_slice(&body).expect("json");
    got.lock().expect("got").apns.push((token, headers, body));
    (StatusCode::OK, Json(json!({})))
}

async fn webpush(State(got): State<Got>, headers: HeaderMap, body: axum::body::Bytes) -> impl IntoResponse {
    got.lock().expect("got").webpush.push((headers, body.to_vec()));
    StatusCode::CREATED
}

/// What a browser does with a Web Push message (RFC 8291): opens it with the subscription's keys.
fn open_webpush(body: &[u8], ua_secret: &p256::SecretKey, auth: &[u8]) -> Vec<u8> {
    use aes_gcm::aead::{Aead, KeyInit};
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let (salt, rest) = body.split_at(16);
    let id_len = rest[4] as usize;
    let sender_bytes = &rest[5..5 + id_len];
    let sender = p256::PublicKey::from_sec1_bytes(sender_bytes).expect("sender key");
    let shared = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), sender.as_affine());
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(ua_secret.public_key().to_encoded_point(false).as_bytes());
    info.extend_from_slice(sender_bytes);
    let mut ikm = [0u8; 32];
    hkdf::Hkdf::<sha2::Sha256>::new(Some(auth), &shared.raw_secret_bytes()[..])
        .expand(&info, &mut ikm)
        .expect("ikm");
    let prk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), &ikm);
    let (mut cek, mut nonce) = ([0u8; 16], [0u8; 12]);
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek).expect("cek");
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce).expect("nonce");
    let mut plain = aes_gcm::Aes128Gcm::new_from_slice(&cek)
        .expect("key")
        .decrypt(&aes_gcm::Nonce::from(nonce), &rest[5 + id_len..])
        .expect("the message opens with the subscription's keys");
    assert_eq!(plain.pop(), Some(2));
    plain
}

#[tokio::test]
async fn apns_over_http2_and_encrypted_web_push_carry_the_fallback() {
    use base64::Engine;
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    let got = Got::default();
    let app = Router::new()
        .route("/3/device/{token}", post(apns))
        .route("/push/{id}", post(webpush))
        .with_state(got.clone());
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let fake = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let dir = tempfile::tempdir().expect("dir");
    let (apns_key, vapid_key) = (dir.path().join("apns.p8"), dir.path().join("vapid.pem"));
    std::fs::write(&apns_key, APNS_KEY).expect("write");
    std::fs::write(&vapid_key, include_str!("fixtures/vapid-test-key.pem")).expect("write");
    let config = config_file(&format!(
        "[downstream.fallback]\nafter_ms = 200\n\n[downstream.fallback.apns]\nkey_file = \"{}\"\nkey_id = \"KEYID12345\"\nteam_id = \"TEAM123456\"\nendpoint = \"{fake}\"\n\n[downstream.fallback.webpush]\nvapid_key_file = \"{}\"\nsubject = \"mailto:ops@example.com\"\n",
        apns_key.display(),
        vapid_key.display()
    ));
    let run = start(&["--config", &config.path]);
    let http = reqwest::Client::new();
    let put = |client: &str, body: Value| {
        http.put(format!("http://{}/v1/clients/{client}/push-tokens", run.push))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };

    // APNs: an alert to the app's topic, with the message id.
    let device = "ab12".repeat(16);
    let status = put(
        "iphone",
        json!({"provider": "apns", "token": device, "app": "com.example.app"}),
    )
    .await
    .expect("register")
    .status();
    assert_eq!(status, 200);
    let dead = "dead".repeat(16);
    assert_eq!(
        put(
            "old-iphone",
            json!({"provider": "apns", "token": dead, "app": "com.example.app"})
        )
        .await
        .expect("register")
        .status(),
        200
    );
    let pushed = push(
        run.push,
        "iphone",
        json!({"title": "Hi", "body": "From Duplex", "collapse_key": "chat-7"}),
    )
    .await;
    let id = pushed["messages"][0]["message_id"].as_str().expect("id").to_owned();
    push(run.push, "old-iphone", json!({})).await;

    // Web Push: a subscription whose keys only the "browser" (this test) holds.
    let ua_secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let auth: [u8; 16] = rand::random();
    let subscription = json!({
        "endpoint": format!("{fake}/push/sub-1"),
        "keys": {
            "p256dh": B64.encode(ua_secret.public_key().to_encoded_point(false).as_bytes()),
            "auth": B64.encode(auth),
        },
    });
    assert_eq!(
        put("browser", json!({"provider": "webpush", "token": subscription}))
            .await
            .expect("register")
            .status(),
        200
    );
    let web = push(run.push, "browser", json!({"title": "Web", "body": "hello browser"})).await;
    let web_id = web["messages"][0]["message_id"].as_str().expect("id").to_owned();

    eventually("APNs and the push service got their notifications", || {
        let g = got.lock().expect("got");
        let done = g.apns.len() == 1 && g.webpush.len() == 1;
        async move { done }
    })
    .await;
    let (token, headers, body) = got.lock().expect("got").apns[0].clone();
    assert_eq!(token, device);
    assert_eq!(headers["apns-topic"], "com.example.app");
    assert_eq!(headers["apns-push-type"], "alert");
    assert_eq!(headers["apns-collapse-id"], "chat-7");
    assert_eq!(body["aps"]["alert"], json!({"title": "Hi", "body": "From Duplex"}));
    assert_eq!(body["duplex_message_id"], id.as_str());

    let (headers, sealed) = got.lock().expect("got").webpush[0].clone();
    assert_eq!(headers["content-encoding"], "aes128gcm");
    assert!(headers["ttl"].to_str().expect("ttl").parse::<u64>().expect("seconds") > 0);
    // VAPID: the token verifies with the key the header names, for this push service.
    let authorization = headers["authorization"].to_str().expect("text").to_owned();
    let (t, k) = authorization
        .strip_prefix("vapid t=")
        .and_then(|rest| rest.split_once(", k="))
        .expect("vapid t=..., k=...");
    let point = B64.decode(k).expect("k");
    assert_eq!((point.len(), point[0]), (65, 4));
    let key = jsonwebtoken::DecodingKey::from_ec_components(&B64.encode(&point[1..33]), &B64.encode(&point[33..]))
        .expect("vapid key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[fake.as_str()]);
    let claims = jsonwebtoken::decode::<Value>(t, &key, &validation).expect("a valid VAPID token");
    assert_eq!(claims.claims["sub"], "mailto:ops@example.com");
    let plain: Value = serde_json::from_slice(&open_webpush(&sealed, &ua_secret, &auth)).expect("JSON inside");
    assert_eq!(
        (
            plain["title"].as_str(),
            plain["body"].as_str(),
            plain["data"]["duplex_message_id"].as_str()
        ),
        (Some("Web"), Some("hello browser"), Some(web_id.as_str()))
    );

    // The token APNs called dead is gone.
    eventually("the dead APNs token was removed", || {
        let url = format!("http://{}/v1/clients/old-iphone/push-tokens", run.push);
        async move { get_json(url).await["tokens"].as_array().is_some_and(Vec::is_empty) }
    })
    .await;
}
