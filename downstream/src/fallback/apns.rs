//! Apple Push Notification service over HTTP/2 with token-based auth: an
//! ES256 provider token (`kid` = the .p8 key's id, `iss` = the team id),
//! reused for 50 minutes (Apple refuses tokens older than an hour and
//! refreshed more than every 20 minutes), and `POST /3/device/<token>`.
//! A small typed client on reqwest (HTTP/2 over TLS by ALPN; `http://`
//! endpoints, for a local relay or a test, speak HTTP/2 without TLS).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Notification, Sent};

pub struct Apns {
    key: jsonwebtoken::EncodingKey,
    key_id: String,
    team_id: String,
    /// Base URL (`https://api.push.apple.com`, or the sandbox's).
    endpoint: String,
    /// The app's bundle id, when a token does not name its own app.
    default_topic: Option<String>,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

/// How long one provider token is used.
const TOKEN_LIFE: Duration = Duration::from_secs(50 * 60);

impl Apns {
    pub fn load(
        key_file: &Path,
        key_id: &str,
        team_id: &str,
        endpoint: &str,
        default_topic: Option<String>,
    ) -> Result<Apns, String> {
        let pem = std::fs::read(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
        let key = jsonwebtoken::EncodingKey::from_ec_pem(&pem)
            .map_err(|e| format!("{}: not a .p8 (PKCS#8 P-256) key: {e}", key_file.display()))?;
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
        if endpoint.starts_with("http://") {
            builder = builder.http2_prior_knowledge();
        }
        let http = builder.build().map_err(|e| format!("APNs client: {e}"))?;
        Ok(Apns {
            key,
            key_id: key_id.to_owned(),
            team_id: team_id.to_owned(),
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            default_topic,
            http,
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn provider_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = serde_json::json!({ "iss": self.team_id, "iat": crate::now_ms() / 1000 });
        let token = jsonwebtoken::encode(&header, &claims, &self.key).map_err(|e| format!("signing: {e}"))?;
        *cached = Some((token.clone(), Instant::now() + TOKEN_LIFE));
        Ok(token)
    }

    pub async fn send(&self, note: &Notification, device_token: &str, app: Option<&str>) -> Sent {
        let Some(topic) = app.map(str::to_owned).or_else(|| self.default_topic.clone()) else {
            return Sent::Refused("no apns-topic: register the token with its app (bundle id)".into());
        };
        let token = match self.provider_token().await {
            Ok(t) => t,
            Err(e) => return Sent::Retry(e),
        };
        let alert = note.title.is_some() || note.body.is_some();
        let mut body = serde_json::Map::new();
        for (k, v) in &note.data {
            body.insert(k.clone(), v.clone().into());
        }
        body.insert(
            "aps".into(),
            if alert {
                serde_json::json!({ "alert": { "title": note.title, "body": note.body } })
            } else {
                serde_json::json!({ "content-available": 1 })
            },
        );
        let mut call = self
            .http
            .post(format!("{}/3/device/{device_token}", self.endpoint))
            .bearer_auth(token)
            .header("apns-topic", topic)
            .header("apns-push-type", if alert { "alert" } else { "background" })
            .header("apns-priority", if alert { "10" } else { "5" })
            .header("apns-expiration", (crate::now_ms() / 1000 + note.ttl_s).to_string())
            .json(&body);
        if let Some(key) = &note.collapse_key {
            call = call.header("apns-collapse-id", key);
        }
        let answer = match call.send().await {
            Ok(a) => a,
            Err(e) => return Sent::Retry(e.to_string()),
        };
        let status = answer.status();
        if status.is_success() {
            return Sent::Accepted;
        }
        let text = answer.text().await.unwrap_or_default();
        let reason = serde_json::from_str::<serde_json::Value>(&text[..text.len().min(4096)])
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match (status.as_u16(), reason.as_str()) {
            (410, _) | (400, "BadDeviceToken") | (400, "DeviceTokenNotForTopic") => Sent::DeadToken,
            (403, "ExpiredProviderToken") | (403, "InvalidProviderToken") => {
                *self.token.lock().await = None;
                Sent::Retry(reason)
            }
            (429, _) | (500..=599, _) => Sent::Retry(format!("{status} {reason}")),
            _ => Sent::Refused(format!("{status} {reason}")),
        }
    }
}
