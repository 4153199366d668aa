//! `[events]`: which lifecycle events go where, and the bounds on the way.

use duplex_brokers::SinkConfig;
use duplex_shared::config::{invalid, ConfigError};
use duplex_shared::events::EventKind;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Event types to report: `connected`, `disconnected`, `acked`, `gap`, `expired`. Default all five.
    pub kinds: Vec<String>,
    /// Events waiting to be sent, per node; a new event beyond it is dropped and counted. Default 10000.
    pub buffer: usize,
    /// Most events in one batch (one webhook call, one queue message). Default 100.
    pub batch_max: usize,
    /// How long a batch waits to fill before it goes, ms. Default 200.
    pub batch_wait_ms: u64,
    /// Signed HTTP POST of each batch. Unset: no webhook.
    pub webhook: Option<WebhookConfig>,
    /// Each batch as one message to a queue (the same kinds as an upload sink). Unset: none.
    pub sink: Option<SinkConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL the batches are POSTed to.
    pub url: String,
    /// HMAC-SHA256 key of the `x-duplex-signature` header, at least 16 bytes.
    pub secret: String,
    /// Timeout of one POST, ms. Default 5000.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Tries per batch (5xx, 429, timeouts and connection errors are retried); then the batch is dropped and counted. Default 5.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay, ms; doubled per try with full jitter. Default 200.
    #[serde(default = "default_retry_min_ms")]
    pub retry_min_ms: u64,
    /// Largest retry delay, ms. Default 10000.
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
}

fn default_timeout_ms() -> u64 {
    5_000
}
fn default_attempts() -> u32 {
    5
}
fn default_retry_min_ms() -> u64 {
    200
}
fn default_retry_max_ms() -> u64 {
    10_000
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            kinds: EventKind::ALL.iter().map(|k| k.label().to_owned()).collect(),
            buffer: 10_000,
            batch_max: 100,
            batch_wait_ms: 200,
            webhook: None,
            sink: None,
        }
    }
}

impl EventsConfig {
    /// Whether any destination is configured (otherwise no event is even built).
    pub fn enabled(&self) -> bool {
        self.webhook.is_some() || self.sink.is_some()
    }

    pub fn kinds(&self) -> Vec<EventKind> {
        self.kinds.iter().filter_map(|k| EventKind::parse(k)).collect()
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(bad) = self.kinds.iter().find(|k| EventKind::parse(k).is_none()) {
            return Err(invalid(
                "events.kinds",
                format!("unknown event {bad:?}; use connected, disconnected, acked, gap, expired"),
            ));
        }
        if self.buffer == 0 || self.buffer > 10_000_000 {
            return Err(invalid("events.buffer", "1 to 10000000"));
        }
        if self.batch_max == 0 || self.batch_max > 10_000 {
            return Err(invalid("events.batch_max", "1 to 10000"));
        }
        if self.batch_wait_ms > 60_000 {
            return Err(invalid("events.batch_wait_ms", "at most 60000"));
        }
        if let Some(w) = &self.webhook {
            if !(w.url.starts_with("http://") || w.url.starts_with("https://")) || reqwest::Url::parse(&w.url).is_err()
            {
                return Err(invalid("events.webhook.url", "an http:// or https:// URL"));
            }
            if w.secret.len() < 16 {
                return Err(invalid("events.webhook.secret", "at least 16 bytes"));
            }
            if w.timeout_ms == 0 || w.max_attempts == 0 || w.retry_min_ms == 0 || w.retry_max_ms < w.retry_min_ms {
                return Err(invalid(
                    "events.webhook.timeout_ms",
                    "timeout_ms, max_attempts and retry_min_ms positive, retry_max_ms >= retry_min_ms",
                ));
            }
        }
        if let Some(sink) = &self.sink {
            sink.check("events.sink")?;
        }
        Ok(())
    }
}
