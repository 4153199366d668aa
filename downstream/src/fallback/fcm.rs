//! Firebase Cloud Messaging, HTTP v1: a service account's OAuth2 JWT grant
//! (RS256, `jsonwebtoken`) for an access token, cached until a minute before
//! it expires, and `POST /v1/projects/{project}/messages:send`. A small typed
//! client on reqwest: Google's own crates are not maintained for this.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::{Notification, Sent};

/// The fields of a service account key file this client uses.
#[derive(Deserialize)]
struct ServiceAccount {
    client_email: String,
    private_key: String,
    token_uri: String,
    project_id: String,
}

pub struct Fcm {
    account: ServiceAccount,
    key: jsonwebtoken::EncodingKey,
    /// Base URL of the send API (`https://fcm.googleapis.com`; a fake in tests).
    endpoint: String,
    http: reqwest::Client,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

impl Fcm {
    pub fn load(service_account_file: &Path, endpoint: &str) -> Result<Fcm, String> {
        let text = std::fs::read_to_string(service_account_file)
            .map_err(|e| format!("{}: {e}", service_account_file.display()))?;
        let account: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| format!("{}: not a service account key: {e}", service_account_file.display()))?;
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| format!("{}: private_key: {e}", service_account_file.display()))?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("FCM client: {e}"))?;
        Ok(Fcm {
            account,
            key,
            endpoint: endpoint.trim_end_matches('/').to_owned(),
            http,
            token: tokio::sync::Mutex::new(None),
        })
    }

    async fn access_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let now = crate::now_ms() / 1000;
        let claims = serde_json::json!({
            "iss": self.account.client_email,
            "scope": SCOPE,
            "aud": self.account.token_uri,
            "iat": now,
            "exp": now + 3600,
        });
        let assertion = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            &self.key,
        )
        .map_err(|e| format!("signing the grant: {e}"))?;
        let answer = self
            .http
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| format!("token endpoint: {e}"))?;
        if !answer.status().is_success() {
            return Err(format!("token endpoint answered {}", answer.status()));
        }
        #[derive(Deserialize)]
        struct Granted {
            access_token: String,
            expires_in: u64,
        }
        let granted: Granted = answer.json().await.map_err(|e| format!("token endpoint: {e}"))?;
        let life = Duration::from_secs(granted.expires_in.saturating_sub(60).max(1));
        *cached = Some((granted.access_token.clone(), Instant::now() + life));
        Ok(granted.access_token)
    }

    /// Sends `note` to one registration token.
    pub async fn send(&self, note: &Notification, registration: &str) -> Sent {
        let mut message = serde_json::json!({ "token": registration, "data": note.data });
        if note.title.is_some() || note.body.is_some() {
            message["notification"] = serde_json::json!({ "title": note.title, "body": note.body });
        }
        let mut android = serde_json::json!({ "ttl": format!("{}s", note.ttl_s) });
        if let Some(key) = &note.collapse_key {
            android["collapse_key"] = key.as_str().into();
        }
        message["android"] = android;
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(e) => return Sent::Retry(e),
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.endpoint, self.account.project_id
        );
        let answer = match self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&serde_json::json!({ "message": message }))
            .send()
            .await
        {
            Ok(a) => a,
            Err(e) => return Sent::Retry(e.to_string()),
        };
        let status = answer.status();
        if status.is_success() {
            return Sent::Accepted;
        }
        if status.as_u16() == 401 {
            // The access token was revoked or expired early: fetch another next time.
            *self.token.lock().await = None;
            return Sent::Retry("401 from FCM".into());
        }
        // Bounded: an error body is small; a huge one is cut.
        let body = answer.text().await.unwrap_or_default();
        let body = &body[..body.len().min(4096)];
        if status.is_server_error() || status.as_u16() == 429 {
            return Sent::Retry(format!("{status}"));
        }
        let error: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let code = error["error"]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|d| d["errorCode"].as_str())
            .unwrap_or_default();
        if code == "UNREGISTERED" || status.as_u16() == 404 {
            return Sent::DeadToken;
        }
        Sent::Refused(format!("{status} {code}"))
    }
}
