//! A fake FCM on 127.0.0.1 that speaks FCM's HTTP v1 API: the OAuth2 JWT
//! grant (the assertion's RS256 signature checked with the service
//! account's public key) and `messages:send` (the access token checked);
//! what it took, and the push API calls the fallback tests make.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

pub const KEY: &str = "duplex-dev-api-key";
const PRIVATE_KEY: &str = include_str!("../fixtures/fcm-test-key.pem");
const PUBLIC_KEY: &str = include_str!("../fixtures/fcm-test-key.pub.pem");
const ACCESS_TOKEN: &str = "ya29.fake-access-token";

#[derive(Default)]
pub struct FakeFcm {
    /// Messages taken (the `message` objects).
    pub sent: Vec<Value>,
    /// Answers to give first, one per send, before accepting.
    pub failures: Vec<u16>,
    /// Tokens this fake calls dead.
    pub dead: Vec<String>,
    pub grants: usize,
}

pub type Shared = Arc<Mutex<FakeFcm>>;

/// `application/x-www-form-urlencoded` fields (the grant's values need only `%XX` and `+`).
fn form_fields(body: &str) -> std::collections::HashMap<String, String> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16) {
                    out.push(b);
                    i += 3;
                    continue;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

async fn token(State(fcm): State<Shared>, body: String) -> impl IntoResponse {
    let form = form_fields(&body);
    if form.get("grant_type").map(String::as_str) != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        );
    }
    let key = jsonwebtoken::DecodingKey::from_rsa_pem(PUBLIC_KEY.as_bytes()).expect("public key");
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    // The audience is the fake's own token URL, which it does not know by name.
    validation.validate_aud = false;
    let claims = jsonwebtoken::decode::<Value>(form.get("assertion").map_or("", String::as_str), &key, &validation);
    match claims {
        Ok(c)
            if c.claims["scope"] == "https://www.googleapis.com/auth/firebase.messaging"
                && c.claims["iss"] == "duplex-test@example.iam.gserviceaccount.com" =>
        {
            fcm.lock().expect("fake").grants += 1;
            (
                StatusCode::OK,
                Json(json!({"access_token": ACCESS_TOKEN, "expires_in": 3600, "token_type": "Bearer"})),
            )
        }
        _ => (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant"}))),
    }
}

async fn send(
    State(fcm): State<Shared>,
    Path((project, method)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
    if project != "duplex-test" || method != "messages:send" || bearer != Some(&format!("Bearer {ACCESS_TOKEN}")) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": {"status": "UNAUTHENTICATED"}})),
        );
    }
    let mut fake = fcm.lock().expect("fake");
    let token = body["message"]["token"].as_str().unwrap_or_default().to_owned();
    if fake.dead.contains(&token) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": {"code": 404, "status": "NOT_FOUND", "details": [
                {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "UNREGISTERED"}]}})),
        );
    }
    if !fake.failures.is_empty() {
        let status = fake.failures.remove(0);
        return (
            StatusCode::from_u16(status).expect("status"),
            Json(json!({"error": {"status": "UNAVAILABLE"}})),
        );
    }
    fake.sent.push(body["message"].clone());
    (
        StatusCode::OK,
        Json(json!({"name": format!("projects/duplex-test/messages/{}", fake.sent.len())})),
    )
}

pub async fn start_fake() -> (String, Shared) {
    let fcm = Shared::default();
    let app = Router::new()
        .route("/token", post(token))
        .route("/v1/projects/{project}/{method}", post(send))
        .with_state(fcm.clone());
    let listener = duplex_shared::net::bind_listener("127.0.0.1:0".parse().expect("addr"), 128, false).expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, fcm)
}

pub async fn register(push_api: std::net::SocketAddr, client: &str, token: &str) {
    let status = reqwest::Client::new()
        .put(format!("http://{push_api}/v1/clients/{client}/push-tokens"))
        .bearer_auth(KEY)
        .json(&json!({"provider": "fcm", "token": token}))
        .send()
        .await
        .expect("register")
        .status();
    assert_eq!(status, 200);
}

/// A push API `GET` with the API key, as JSON.
pub async fn get_json(url: String) -> Value {
    reqwest::Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json")
}

pub async fn push(push_api: std::net::SocketAddr, client: &str, fallback: Value) -> Value {
    let answer = reqwest::Client::new()
        .post(format!("http://{push_api}/v1/push"))
        .bearer_auth(KEY)
        .json(&json!({"client_ids": [client], "payload": {"n": 1}, "fallback": fallback}))
        .send()
        .await
        .expect("push");
    assert_eq!(answer.status(), 202);
    answer.json().await.expect("json")
}

/// Writes a service account key file for the fake (its token URL) into `dir`.
pub fn service_account(dir: &std::path::Path, fcm_url: &str) -> std::path::PathBuf {
    let account = dir.join("service-account.json");
    std::fs::write(
        &account,
        json!({
            "type": "service_account",
            "project_id": "duplex-test",
            "client_email": "duplex-test@example.iam.gserviceaccount.com",
            "private_key": PRIVATE_KEY,
            "token_uri": format!("{fcm_url}/token"),
        })
        .to_string(),
    )
    .expect("write the key file");
    account
}
