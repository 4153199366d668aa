//! Bounds shared by the HTTP listeners: push API, admin and internal.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Open connections per HTTP listener; more are answered 503 and closed.
    pub max_connections: u32,
    /// A request head must arrive within this; also how long an idle
    /// keep-alive connection stays open.
    pub header_timeout_ms: u64,
    /// A request, its body included, must be handled within this (else 408).
    pub request_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_connections: 4096,
            header_timeout_ms: 30_000,
            request_timeout_ms: 30_000,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        for (name, v) in [
            ("header_timeout_ms", self.header_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&v) {
                return Err(invalid(&format!("http.{name}"), "must be within 100..=3600000 ms"));
            }
        }
        Ok(())
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.header_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
