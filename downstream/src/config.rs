//! The downstream tier's configuration: the push API and delivery.

use std::net::SocketAddr;

use duplex_brokers::SourceConfig;
use duplex_shared::config::{invalid, ConfigError};
use serde::{Deserialize, Serialize};

/// API key accepted when none is configured, only while every listener is on loopback.
pub const DEV_API_KEY: &str = "duplex-dev-api-key";

/// Downstream tier: the push API for backends and delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DownstreamConfig {
    /// Push API listener (HTTP). Default `127.0.0.1:7080`.
    pub http_listen: SocketAddr,
    /// Keys backends send as `Authorization: Bearer <key>`, each at least 16 bytes.
    /// Unset: a development key (`duplex-dev-api-key`), loopback only.
    pub api_keys: Vec<String>,
    /// Largest push payload after base64 decoding, bytes. Default 32768; with headers it
    /// must fit in `access.max_frame_bytes`.
    pub max_payload_bytes: u32,
    /// Largest HTTP request body, bytes (batches). Default 1048576.
    pub max_body_bytes: u32,
    /// TTL of a qos-1 message when the push names none, seconds. Default 86400.
    pub default_ttl_s: u64,
    /// Largest TTL a push may ask for, seconds. Default 604800 (7 days).
    pub max_ttl_s: u64,
    /// Pending messages per client; a push beyond it is refused with 429. Default 1000.
    pub queue_max_messages: u64,
    /// Pending payload bytes per client; a push beyond it is refused with 429. Default 4194304.
    pub queue_max_bytes: u64,
    /// How long an idempotency key is remembered, seconds. Default 86400.
    pub idempotency_ttl_s: u64,
    /// Most target clients one push may expand to (client_ids plus users' clients). Default 1000.
    pub max_targets: usize,
    /// Most items in one `POST /v1/push/batch`. Default 100.
    pub max_batch: usize,
    /// Failed deliveries are retried with exponential backoff and full jitter from this, ms. Default 200.
    pub retry_min_ms: u64,
    /// ... up to this delay, ms. Default 30000.
    pub retry_max_ms: u64,
    /// Most `wait_ack_ms` a push may ask for. Default 30000.
    pub max_wait_ack_ms: u64,
    /// Message queues backends push through, besides the HTTP API (docs/QUEUES.md).
    /// TOML only: `[[downstream.sources]]` with `kind = "nats" | "amqp" | "redis"`.
    pub sources: Vec<SourceConfig>,
    /// OS push fallback for pushes that ask for it (docs/API.md). Default: no provider.
    pub fallback: crate::fallback::FallbackConfig,
}

impl Default for DownstreamConfig {
    fn default() -> Self {
        DownstreamConfig {
            http_listen: SocketAddr::from(([127, 0, 0, 1], 7080)),
            api_keys: Vec::new(),
            max_payload_bytes: 32 * 1024,
            max_body_bytes: 1024 * 1024,
            default_ttl_s: 86_400,
            max_ttl_s: 7 * 86_400,
            queue_max_messages: 1_000,
            queue_max_bytes: 4 * 1024 * 1024,
            idempotency_ttl_s: 86_400,
            max_targets: 1_000,
            max_batch: 100,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
            max_wait_ack_ms: 30_000,
            sources: Vec::new(),
            fallback: Default::default(),
        }
    }
}

impl DownstreamConfig {
    /// Checks limits and fills in the development key where allowed.
    pub fn resolve(&mut self, loopback_only: bool, max_frame_bytes: u32) -> Result<(), ConfigError> {
        let f = "downstream.";
        if self.api_keys.is_empty() {
            if !loopback_only {
                return Err(invalid(
                    &format!("{f}api_keys"),
                    "required when listening beyond loopback (set DUPLEX_DOWNSTREAM__API_KEYS)",
                ));
            }
            self.api_keys.push(DEV_API_KEY.to_owned());
        }
        if self.api_keys.iter().any(|k| k.len() < 16) {
            return Err(invalid(&format!("{f}api_keys"), "each key must be at least 16 bytes"));
        }
        // Headers and framing fit in the 4 KiB left over.
        if self.max_payload_bytes == 0 || u64::from(self.max_payload_bytes) + 4096 > u64::from(max_frame_bytes) {
            return Err(invalid(
                &format!("{f}max_payload_bytes"),
                "must be positive and 4 KiB below access.max_frame_bytes",
            ));
        }
        if self.max_body_bytes < self.max_payload_bytes * 2 {
            return Err(invalid(
                &format!("{f}max_body_bytes"),
                "must be at least twice max_payload_bytes (base64 and JSON)",
            ));
        }
        if self.default_ttl_s == 0 || self.default_ttl_s > self.max_ttl_s || self.max_ttl_s > 30 * 86_400 {
            return Err(invalid(
                &format!("{f}default_ttl_s"),
                "need 1 <= default_ttl_s <= max_ttl_s <= 30 days",
            ));
        }
        if self.queue_max_messages == 0 {
            return Err(invalid(&format!("{f}queue_max_messages"), "must be positive"));
        }
        if self.queue_max_bytes < u64::from(self.max_payload_bytes) {
            return Err(invalid(
                &format!("{f}queue_max_bytes"),
                "must hold at least one largest message (max_payload_bytes)",
            ));
        }
        if self.max_targets == 0 || self.max_batch == 0 || self.idempotency_ttl_s == 0 {
            return Err(invalid(
                &format!("{f}max_targets"),
                "max_targets, max_batch and idempotency_ttl_s must be positive",
            ));
        }
        if self.retry_min_ms == 0 || self.retry_max_ms < self.retry_min_ms {
            return Err(invalid(
                &format!("{f}retry_max_ms"),
                "need 0 < retry_min_ms <= retry_max_ms",
            ));
        }
        if self.fallback.queue == 0 || self.fallback.max_attempts == 0 {
            return Err(invalid(
                &format!("{f}fallback.queue"),
                "queue and max_attempts must be positive",
            ));
        }
        if let Some(fcm) = &self.fallback.fcm {
            if !(fcm.endpoint.starts_with("https://") || fcm.endpoint.starts_with("http://")) {
                return Err(invalid(&format!("{f}fallback.fcm.endpoint"), "must be an http(s) URL"));
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            source.check(&format!("{f}sources[{i}]"))?;
            if self.sources[..i].iter().any(|s| s.name() == source.name()) {
                return Err(invalid(
                    &format!("{f}sources[{i}].name"),
                    "each source needs its own name",
                ));
            }
        }
        Ok(())
    }
}
