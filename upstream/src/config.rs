//! Upstream tier: the routing table (services and their backend pools) and
//! the soft-F5 knobs shared by every pool.

use std::collections::BTreeMap;

use duplex_brokers::SinkConfig;
use serde::{Deserialize, Serialize};

use duplex_shared::config::{invalid, ConfigError};

/// Upstream tier: backend services and how calls to them are balanced, retried and spooled.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Services by name; a client frame names one. Default: none (uploads and requests are refused).
    pub services: BTreeMap<String, ServiceConfig>,
    /// How long a spooled upload is retried before it is dropped and counted, seconds. Default 86400.
    pub spool_ttl_s: u64,
    /// Most uploads spooled per service; beyond it an upload is refused (retryable). Default 100000.
    pub spool_max_items: u64,
    /// Most bytes of uploads spooled per service. Default 268435456 (256 MiB).
    pub spool_max_bytes: u64,
    /// Most uploads one user (all of its clients) may have spooled per service. Default 1000.
    pub spool_max_user_items: u64,
    /// Most bytes of uploads one user may have spooled per service. Default 16777216 (16 MiB).
    pub spool_max_user_bytes: u64,
    /// Retries may add at most this percentage of extra calls per service. Default 20.
    pub retry_budget_percent: u32,
    /// Retries always allowed per service and second, so a quiet service can still retry. Default 5.
    pub retry_budget_min_per_s: u32,
    /// Consecutive failures (5xx, timeouts, connection errors) that eject an endpoint. Default 5.
    pub eject_after_failures: u32,
    /// First ejection lasts this long, ms; each repeated ejection doubles it. Default 1000.
    pub eject_base_ms: u64,
    /// Longest ejection, ms. Default 60000.
    pub eject_max_ms: u64,
    /// Largest backend response body turned into a reply, bytes. Default 49152 (fits a frame).
    pub max_reply_bytes: u32,
    /// How long the outcome of an upload is kept so a client's resend is answered
    /// without calling the backend again, seconds. Default 600.
    pub dedup_window_s: u64,
    /// Requests this node may have waiting for a backend; beyond it a request is
    /// refused at once (retryable). Default 10000.
    pub max_requests_in_flight: u32,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            services: BTreeMap::new(),
            spool_ttl_s: 86_400,
            spool_max_items: 100_000,
            spool_max_bytes: 256 << 20,
            spool_max_user_items: 1_000,
            spool_max_user_bytes: 16 << 20,
            retry_budget_percent: 20,
            retry_budget_min_per_s: 5,
            eject_after_failures: 5,
            eject_base_ms: 1_000,
            eject_max_ms: 60_000,
            max_reply_bytes: 48 * 1024,
            dedup_window_s: 600,
            max_requests_in_flight: 10_000,
        }
    }
}

/// One backend service: a pool of endpoints and what clients may call on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Backend endpoints; the client's path is appended to each URL's path.
    pub endpoints: Vec<EndpointConfig>,
    /// HTTP methods clients may use in requests (uploads are always POST). Default `["GET", "POST"]`.
    pub methods: Vec<String>,
    /// Paths clients may reach must start with one of these. Default `["/"]`.
    pub path_prefixes: Vec<String>,
    /// Timeout of one try against one endpoint, ms. Default 2000.
    pub try_timeout_ms: u64,
    /// Overall deadline of a request including retries, ms; also the reply's TTL. Default 10000.
    pub deadline_ms: u64,
    /// Path probed by active health checks (`GET`, 2xx = healthy). Unset: passive checks only.
    pub health_path: Option<String>,
    /// Interval of active health checks, ms. Default 5000.
    pub health_interval_ms: u64,
    /// Client frame headers passed on to the backend (lowercase names). Default `["content-type"]`.
    pub pass_headers: Vec<String>,
    /// Backend response headers passed back in the reply. Default `["content-type"]`.
    pub reply_headers: Vec<String>,
    /// Calls one endpoint may have in flight; a full endpoint is skipped. Default 256.
    pub max_concurrency: u32,
    /// The backend honours `Idempotency-Key`, so non-idempotent requests may be retried. Default false.
    pub idempotency_keys: bool,
    /// Uploads go to this message queue instead of the endpoints (docs/QUEUES.md); requests
    /// stay HTTP. With a sink, `endpoints` may be empty: the service then takes uploads only.
    #[schema(value_type = Option<Object>)]
    pub sink: Option<SinkConfig>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            endpoints: Vec::new(),
            methods: vec!["GET".into(), "POST".into()],
            path_prefixes: vec!["/".into()],
            try_timeout_ms: 2_000,
            deadline_ms: 10_000,
            health_path: None,
            health_interval_ms: 5_000,
            pass_headers: vec!["content-type".into()],
            reply_headers: vec!["content-type".into()],
            max_concurrency: 256,
            idempotency_keys: false,
            sink: None,
        }
    }
}

/// One backend endpoint of a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL, `http://` or `https://`, no query or fragment, e.g. `http://10.0.0.5:8080/api`.
    pub url: String,
    /// Relative share of traffic. Default 1.
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];

impl UpstreamConfig {
    /// The bounds of each service's spool; owners are users.
    pub fn spool_limits(&self) -> duplex_store::SpoolLimits {
        duplex_store::SpoolLimits {
            max_items: self.spool_max_items,
            max_bytes: self.spool_max_bytes,
            max_owner_items: self.spool_max_user_items,
            max_owner_bytes: self.spool_max_user_bytes,
        }
    }

    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if self.retry_budget_percent > 100 {
            return Err(invalid("upstream.retry_budget_percent", "at most 100"));
        }
        if self.eject_after_failures == 0 || self.eject_base_ms == 0 || self.eject_max_ms < self.eject_base_ms {
            return Err(invalid(
                "upstream.eject_after_failures",
                "eject_after_failures and eject_base_ms must be positive, eject_max_ms >= eject_base_ms",
            ));
        }
        if self.dedup_window_s == 0 || self.max_requests_in_flight == 0 {
            return Err(invalid(
                "upstream.dedup_window_s",
                "dedup_window_s and max_requests_in_flight must be positive",
            ));
        }
        for (key, value) in [
            ("upstream.spool_ttl_s", self.spool_ttl_s),
            ("upstream.spool_max_items", self.spool_max_items),
            ("upstream.spool_max_bytes", self.spool_max_bytes),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive"));
            }
        }
        if self.spool_max_user_items == 0 || self.spool_max_user_items > self.spool_max_items {
            return Err(invalid(
                "upstream.spool_max_user_items",
                "must be positive and at most spool_max_items",
            ));
        }
        if self.spool_max_user_bytes == 0 || self.spool_max_user_bytes > self.spool_max_bytes {
            return Err(invalid(
                "upstream.spool_max_user_bytes",
                "must be positive and at most spool_max_bytes",
            ));
        }
        for (name, service) in &mut self.services {
            let f = format!("upstream.services.{name}");
            if name.is_empty()
                || name.len() > 64
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                return Err(invalid(&f, "service names use 1..=64 of [A-Za-z0-9_.-]"));
            }
            service.validate(&f)?;
        }
        Ok(())
    }
}

impl ServiceConfig {
    fn validate(&mut self, f: &str) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() && self.sink.is_none() {
            return Err(invalid(&format!("{f}.endpoints"), "at least one endpoint (or a sink)"));
        }
        if let Some(sink) = &self.sink {
            sink.check(&format!("{f}.sink"))?;
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let field = format!("{f}.endpoints[{i}].url");
            check_base_url(&e.url).map_err(|m| invalid(&field, m))?;
            if e.weight == 0 || e.weight > 1000 {
                return Err(invalid(&format!("{f}.endpoints[{i}].weight"), "1..=1000"));
            }
        }
        for m in &mut self.methods {
            m.make_ascii_uppercase();
            if !METHODS.contains(&m.as_str()) {
                return Err(invalid(
                    &format!("{f}.methods"),
                    format!("unknown method {m}; use {METHODS:?}"),
                ));
            }
        }
        for p in &self.path_prefixes {
            if !p.starts_with('/') || p.contains("..") || p.contains("//") {
                return Err(invalid(
                    &format!("{f}.path_prefixes"),
                    format!("{p:?} must start with / and hold no .. or //"),
                ));
            }
        }
        if let Some(h) = &self.health_path {
            if !h.starts_with('/') {
                return Err(invalid(&format!("{f}.health_path"), "must start with /"));
            }
        }
        if self.try_timeout_ms == 0 || self.deadline_ms < self.try_timeout_ms || self.health_interval_ms < 100 {
            return Err(invalid(
                &format!("{f}.deadline_ms"),
                "try_timeout_ms > 0, deadline_ms >= try_timeout_ms, health_interval_ms >= 100",
            ));
        }
        if self.max_concurrency == 0 {
            return Err(invalid(&format!("{f}.max_concurrency"), "must be positive"));
        }
        for h in self.pass_headers.iter_mut().chain(self.reply_headers.iter_mut()) {
            h.make_ascii_lowercase();
        }
        Ok(())
    }
}

/// Checks an endpoint base URL by hand (the config crate has no URL parser):
/// scheme http/https, a host, no userinfo, query or fragment.
fn check_base_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("{url:?} must start with http:// or https://"))?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty()
        || host.contains('@')
        || url.contains(['?', '#'])
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "{url:?} needs a host and no userinfo, query, fragment or whitespace"
        ));
    }
    Ok(())
}
