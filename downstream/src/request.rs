//! Push requests as backends send them, and their validation. Everything is
//! checked before anything is stored, so a bad request stores nothing.

use std::collections::BTreeMap;

use crate::config::DownstreamConfig;
use base64::Engine;
use bytes::Bytes;
use duplex_shared::protocol::valid_client_id;
use serde::Deserialize;

use crate::error::ApiError;

/// Body of `POST /v1/push` (and each item of `/v1/push/batch`).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    #[serde(default)]
    pub client_ids: Vec<String>,
    #[serde(default)]
    pub user_ids: Vec<String>,
    /// Every connected client (qos 0 only).
    #[serde(default)]
    pub all: bool,
    /// Any JSON value; delivered as the JSON text it was sent as (taken
    /// as it is, not parsed into a tree and written again: large numbers and
    /// number spellings stay exact).
    #[schema(value_type = Option<serde_json::Value>)]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// Raw bytes, standard base64.
    pub payload_base64: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// 1 (default): stored until acked or expired. 0: online clients only, never stored.
    pub qos: Option<u8>,
    /// Seconds a qos-1 message is kept for delivery.
    pub ttl: Option<u64>,
    pub idempotency_key: Option<String>,
    /// Wait up to this long for the client's ack before answering.
    pub wait_ack_ms: Option<u64>,
    /// An OS notification if the client has not acked in time (qos 1; docs/API.md).
    pub fallback: Option<crate::fallback::FallbackRequest>,
}

/// Body of `POST /v1/push/batch`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub pushes: Vec<PushRequest>,
}

/// A push that passed validation.
#[derive(Debug, Clone)]
pub struct ValidPush {
    pub client_ids: Vec<String>,
    pub user_ids: Vec<String>,
    pub all: bool,
    pub payload: Bytes,
    pub headers: BTreeMap<String, String>,
    pub qos: u8,
    pub ttl_ms: u64,
    pub idempotency_key: Option<String>,
    pub wait_ack_ms: u64,
    pub fallback: Option<crate::fallback::Fallback>,
}

const MAX_HEADERS: usize = 32;
const MAX_HEADER_BYTES: usize = 1024;

fn safe_key(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl PushRequest {
    pub fn validate(self, cfg: &DownstreamConfig) -> Result<ValidPush, ApiError> {
        let qos = self.qos.unwrap_or(1);
        if qos > 1 {
            return Err(ApiError::bad("bad_qos", "qos must be 0 or 1"));
        }
        if self.all {
            if qos != 0 {
                return Err(ApiError::bad("bad_target", "`all` is only allowed with qos 0"));
            }
            if !self.client_ids.is_empty() || !self.user_ids.is_empty() {
                return Err(ApiError::bad("bad_target", "`all` excludes client_ids and user_ids"));
            }
        } else if self.client_ids.is_empty() && self.user_ids.is_empty() {
            return Err(ApiError::bad("empty_targets", "name client_ids, user_ids, or all"));
        }
        if self.client_ids.len() + self.user_ids.len() > cfg.max_targets {
            return Err(ApiError::bad(
                "too_many_targets",
                format!("at most {} targets per push", cfg.max_targets),
            ));
        }
        if let Some(bad) = self.client_ids.iter().find(|c| !valid_client_id(c)) {
            return Err(ApiError::bad(
                "bad_client_id",
                format!("client id {bad:?} is not 1..=128 of [A-Za-z0-9._:-]"),
            ));
        }
        if let Some(bad) = self.user_ids.iter().find(|u| u.is_empty() || u.len() > 256) {
            return Err(ApiError::bad(
                "bad_user_id",
                format!("user id {bad:?} must be 1..=256 bytes"),
            ));
        }
        let payload = match (self.payload, self.payload_base64) {
            (Some(_), Some(_)) => return Err(ApiError::bad("bad_payload", "send payload or payload_base64, not both")),
            (None, None) => return Err(ApiError::bad("bad_payload", "payload or payload_base64 is required")),
            (Some(v), None) => Bytes::copy_from_slice(v.get().as_bytes()),
            (None, Some(b)) => Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b.as_bytes())
                    .map_err(|e| ApiError::bad("bad_base64", format!("payload_base64: {e}")))?,
            ),
        };
        if payload.len() > cfg.max_payload_bytes as usize {
            return Err(ApiError::new(
                axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("payload of {} bytes exceeds {}", payload.len(), cfg.max_payload_bytes),
            ));
        }
        if self.headers.len() > MAX_HEADERS
            || self
                .headers
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() + v.len() > MAX_HEADER_BYTES)
        {
            return Err(ApiError::bad(
                "bad_headers",
                format!(
                    "at most {MAX_HEADERS} headers, each name non-empty and name+value <= {MAX_HEADER_BYTES} bytes"
                ),
            ));
        }
        let ttl_s = self.ttl.unwrap_or(cfg.default_ttl_s);
        if ttl_s == 0 || ttl_s > cfg.max_ttl_s {
            return Err(ApiError::bad(
                "bad_ttl",
                format!("ttl must be within 1..={} seconds", cfg.max_ttl_s),
            ));
        }
        if let Some(k) = &self.idempotency_key {
            if !safe_key(k) {
                return Err(ApiError::bad(
                    "bad_idempotency_key",
                    "idempotency_key must be 1..=128 of [A-Za-z0-9._:-]",
                ));
            }
            if qos == 0 {
                return Err(ApiError::bad(
                    "bad_idempotency_key",
                    "qos-0 pushes are never stored, so they cannot be idempotent",
                ));
            }
        }
        let wait_ack_ms = self.wait_ack_ms.unwrap_or(0);
        if wait_ack_ms > cfg.max_wait_ack_ms || (wait_ack_ms > 0 && qos == 0) {
            return Err(ApiError::bad(
                "bad_wait_ack",
                format!("wait_ack_ms must be within 0..={} and needs qos 1", cfg.max_wait_ack_ms),
            ));
        }
        let fallback = match self.fallback {
            Some(_) if qos == 0 => {
                return Err(ApiError::bad(
                    "bad_fallback",
                    "a fallback needs qos 1 (it waits for the ack)",
                ))
            }
            Some(_) if !cfg.fallback.configured() => {
                return Err(ApiError::bad(
                    "fallback_unavailable",
                    "no OS push provider is configured (downstream.fallback)",
                ))
            }
            Some(f) => Some(f.check(&cfg.fallback, ttl_s * 1000)?),
            None => None,
        };
        let mut client_ids = self.client_ids;
        client_ids.sort();
        client_ids.dedup();
        let mut user_ids = self.user_ids;
        user_ids.sort();
        user_ids.dedup();
        Ok(ValidPush {
            client_ids,
            user_ids,
            all: self.all,
            payload,
            headers: self.headers,
            qos,
            ttl_ms: ttl_s * 1000,
            idempotency_key: self.idempotency_key,
            wait_ack_ms,
            fallback,
        })
    }
}

/// Parses a JSON body into `T`, with our error codes instead of the framework's text.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown field") {
            ApiError::bad("unknown_field", msg)
        } else {
            ApiError::bad("bad_json", msg)
        }
    })
}
