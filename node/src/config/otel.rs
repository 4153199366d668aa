//! `[otel]`: OpenTelemetry trace export (docs/OPERATIONS.md, "Traces").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use duplex_shared::config::{invalid, ConfigError};

/// OTLP trace export. Off until `endpoint` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtelConfig {
    /// OTLP/HTTP collector base URL, e.g. `http://127.0.0.1:4318` (spans go
    /// to `<endpoint>/v1/traces`). Unset: no export.
    pub endpoint: Option<String>,
    /// `http/protobuf` or `http/json`. Default `http/protobuf`.
    pub protocol: String,
    /// The `service.name` resource attribute. Default `duplex`.
    pub service_name: String,
    /// Share of new traces sampled (0.0 to 1.0); a caller's sampled flag is
    /// followed. Default 1.0.
    pub sample_ratio: f64,
    /// How long finished spans wait to be sent in one batch. Default 5000.
    pub batch_delay_ms: u64,
    /// Finished spans waiting to be sent; more are dropped. Default 2048.
    pub queue: usize,
    /// Headers sent with every export (e.g. a hosted collector's API key).
    pub headers: BTreeMap<String, String>,
}

impl Default for OtelConfig {
    fn default() -> Self {
        OtelConfig {
            endpoint: None,
            protocol: "http/protobuf".into(),
            service_name: "duplex".into(),
            sample_ratio: 1.0,
            batch_delay_ms: 5_000,
            queue: 2_048,
            headers: BTreeMap::new(),
        }
    }
}

impl OtelConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.endpoint {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("otel.endpoint", "must start with http:// or https://"));
            }
        }
        if !matches!(self.protocol.as_str(), "http/protobuf" | "http/json") {
            return Err(invalid("otel.protocol", "must be http/protobuf or http/json"));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid("otel.sample_ratio", "must be between 0.0 and 1.0"));
        }
        if self.service_name.is_empty() {
            return Err(invalid("otel.service_name", "must not be empty"));
        }
        if self.queue == 0 || self.batch_delay_ms == 0 {
            return Err(invalid("otel", "queue and batch_delay_ms must be positive"));
        }
        Ok(())
    }

    /// The traces URL (`<endpoint>/v1/traces`), if export is on.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.endpoint.as_deref()?.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}
