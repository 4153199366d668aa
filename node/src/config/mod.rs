//! A node's whole configuration: one section per tier (each tier crate owns
//! its own), the store, the registry, the admin listener, logs. Loading
//! (TOML file, `DUPLEX_*` environment, flags) happens in the binary; this
//! module only describes and checks.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

mod otel;
mod registry;
mod secrets;

pub use duplex_access::config::{AccessConfig, AuthConfig, JwtAlgorithm, TlsConfig, DEV_SECRET};
pub use duplex_downstream::config::{DownstreamConfig, DEV_API_KEY};
pub use duplex_events::{EventsConfig, WebhookConfig};
pub use duplex_shared::config::{invalid, ConfigError, HttpConfig};
pub use duplex_shared::secrets::redact_url;
pub use duplex_upstream::config::{EndpointConfig, ServiceConfig, UpstreamConfig};
pub use otel::OtelConfig;
pub use registry::{InternalTls, RegistryConfig, DEV_INTERNAL_SECRET};

/// Whole-node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Unique id of this node in routes and the registry. Default: `n-` and 8 random hex digits.
    pub node_id: Option<String>,
    /// Redis URL (`redis://host:port/db`). Unset: the in-memory store, single node only.
    pub redis_url: Option<String>,
    /// Prefix of every store key, so several deployments can share one Redis. Default `dx:`.
    pub key_prefix: String,
    /// PEM file of a CA that a `rediss://` server's certificate may be signed by,
    /// besides the system's roots. Default: none.
    pub redis_ca_file: Option<std::path::PathBuf>,
    pub access: AccessConfig,
    pub upstream: UpstreamConfig,
    pub downstream: DownstreamConfig,
    pub admin: AdminConfig,
    /// Bounds of the push API, admin and internal HTTP listeners.
    pub http: HttpConfig,
    pub registry: RegistryConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    /// Lifecycle events to backends (docs/EVENTS.md). Default: none sent.
    pub events: EventsConfig,
    /// OpenTelemetry trace export. Default: off.
    pub otel: OtelConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            redis_url: None,
            key_prefix: "dx:".into(),
            redis_ca_file: None,
            access: AccessConfig::default(),
            upstream: UpstreamConfig::default(),
            downstream: DownstreamConfig::default(),
            admin: AdminConfig::default(),
            http: HttpConfig::default(),
            registry: RegistryConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            events: EventsConfig::default(),
            otel: OtelConfig::default(),
        }
    }
}

impl Config {
    /// Checks every field and fills in what depends on others (the
    /// development secret on loopback-only nodes); the first problem.
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(first) => Err(first),
            None => Ok(()),
        }
    }

    /// Every problem at once (`duplex check-config`): one per check, each
    /// section's own checks stopping at its first. Fills in what `validate` fills in.
    pub fn problems(&mut self) -> Vec<ConfigError> {
        let mut found = Vec::new();
        let mut check = |result: Result<(), ConfigError>| {
            if let Err(e) = result {
                found.push(e);
            }
        };
        if let Some(id) = &self.node_id {
            if !duplex_protocol::valid_client_id(id) || id.contains('|') {
                check(Err(invalid("node_id", "use 1..=128 of [A-Za-z0-9._:-]")));
            }
        }
        if let Some(url) = &self.redis_url {
            let schemes = [
                "redis://",
                "rediss://",
                "redis+unix://",
                "redis+cluster://",
                "rediss+cluster://",
                "redis+sentinel://",
                "rediss+sentinel://",
            ];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                check(Err(invalid(
                    "redis_url",
                    "must start with redis://, rediss://, redis+unix://, redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://",
                )));
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            check(Err(invalid("key_prefix", "must be non-empty and hold no braces")));
        }
        check(self.access.validate());
        let loopback_only = self.access.all_loopback() && self.downstream.http_listen.ip().is_loopback();
        check(self.auth.resolve(loopback_only));
        check(self.downstream.resolve(loopback_only, self.access.max_frame_bytes));
        check(self.upstream.validate());
        check(self.registry.validate());
        check(self.http.validate());
        check(self.events.validate());
        check(self.otel.validate());
        match &self.admin.token {
            Some(t) if t.len() < 16 => check(Err(invalid("admin.token", "at least 16 bytes"))),
            None if !self.admin.listen.ip().is_loopback() => check(Err(invalid(
                "admin.token",
                "required when admin.listen is not a loopback address",
            ))),
            _ => {}
        }
        match (&self.admin.read_token, &self.admin.token) {
            (Some(r), _) if r.len() < 16 => check(Err(invalid("admin.read_token", "at least 16 bytes"))),
            (Some(_), None) => check(Err(invalid("admin.read_token", "needs admin.token"))),
            (Some(r), Some(t)) if r == t => check(Err(invalid("admin.read_token", "must differ from admin.token"))),
            _ => {}
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            check(Err(invalid("log.format", "must be text or json")));
        }
        check(secrets::refuse_placeholders(self));
        // The development internal secret is public: once the operator set
        // real secrets, this node's internal listener gets a random one
        // unless `registry.internal_secret` is set (a split node needs it set).
        if self.registry.internal_secret.is_none() && secrets::has_real_secret(self) {
            self.registry.internal_secret = Some(secrets::random_internal_secret());
            self.registry.internal_secret_generated = true;
        }
        found
    }

    /// The configured node id, or a fresh random one.
    pub fn node_id_or_random(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("n-{:08x}", rand::random::<u32>()))
    }
}

/// The node's operator endpoints: `/metrics`, `/healthz`, `/readyz`. Never
/// served on a client or backend port.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Admin listener (HTTP). Default `127.0.0.1:7090`; keep it off public networks.
    pub listen: SocketAddr,
    /// Bearer token the admin API's changing calls (isolate, recover) require, at least 16
    /// bytes. Required when `listen` is not a loopback address; unset on loopback: no token.
    pub token: Option<String>,
    /// A second token, at least 16 bytes, that may read the admin API (and
    /// the dashboard) but change nothing. Needs `token`. Default: none.
    pub read_token: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7090)),
            token: None,
            read_token: None,
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`. Default `text`.
    pub format: String,
    /// `tracing` filter directives, e.g. `info,duplex_access=debug`. Default `info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "text".into(),
            filter: "info".into(),
        }
    }
}
