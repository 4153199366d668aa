//! Typed configuration of a node, one section per tier, with defaults and
//! validation. Loading (TOML file, `DUPLEX_*` environment, flags) happens in
//! the binary; this module only describes and checks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::protocol::{Limits, MAX_NESTING_LIMIT};

mod http;
mod registry;
mod upstream;

pub use http::HttpConfig;
pub use registry::{RegistryConfig, DEV_INTERNAL_SECRET};

mod secrets;
pub use upstream::{EndpointConfig, ServiceConfig, UpstreamConfig};

/// HS256 secret used when none is configured. Accepted only while every
/// listener is on a loopback address, so it can never guard a reachable node.
pub const DEV_SECRET: &str = "duplex-development-secret-do-not-deploy";

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("cannot load configuration: {0}")]
    Load(String),
}

fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}

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
    pub access: AccessConfig,
    pub upstream: UpstreamConfig,
    pub downstream: DownstreamConfig,
    pub admin: AdminConfig,
    /// Bounds of the push API, admin and internal HTTP listeners.
    pub http: HttpConfig,
    pub registry: RegistryConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: None,
            redis_url: None,
            key_prefix: "dx:".into(),
            access: AccessConfig::default(),
            upstream: UpstreamConfig::default(),
            downstream: DownstreamConfig::default(),
            admin: AdminConfig::default(),
            http: HttpConfig::default(),
            registry: RegistryConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
        }
    }
}

impl Config {
    /// Checks every field and fills in what depends on others (the
    /// development secret on loopback-only nodes).
    pub fn validate(&mut self) -> Result<(), ConfigError> {
        if let Some(id) = &self.node_id {
            if !crate::protocol::valid_client_id(id) || id.contains('|') {
                return Err(invalid("node_id", "use 1..=128 of [A-Za-z0-9._:-]"));
            }
        }
        if let Some(url) = &self.redis_url {
            let schemes = [
                "redis://",
                "rediss://",
                "redis+unix://",
                "redis+cluster://",
                "redis+sentinel://",
            ];
            if !schemes.iter().any(|s| url.starts_with(s)) {
                return Err(invalid(
                    "redis_url",
                    "must start with redis://, rediss://, redis+unix://, redis+cluster:// or redis+sentinel://",
                ));
            }
        }
        if self.key_prefix.is_empty() || self.key_prefix.contains(['{', '}']) {
            return Err(invalid("key_prefix", "must be non-empty and hold no braces"));
        }
        self.access.validate()?;
        let loopback_only = self.access.all_loopback() && self.downstream.http_listen.ip().is_loopback();
        self.auth.resolve(loopback_only)?;
        self.downstream.resolve(loopback_only, self.access.max_frame_bytes)?;
        self.upstream.validate()?;
        self.registry.validate()?;
        self.http.validate()?;
        match &self.admin.token {
            Some(t) if t.len() < 16 => return Err(invalid("admin.token", "at least 16 bytes")),
            None if !self.admin.listen.ip().is_loopback() => {
                return Err(invalid(
                    "admin.token",
                    "required when admin.listen is not a loopback address",
                ))
            }
            _ => {}
        }
        secrets::refuse_placeholders(self)?;
        // The development internal secret is public: once the operator set
        // real secrets, this node's internal listener gets a random one
        // unless `registry.internal_secret` is set (a split node needs it set).
        if self.registry.internal_secret.is_none() && secrets::has_real_secret(self) {
            self.registry.internal_secret = Some(secrets::random_internal_secret());
            self.registry.internal_secret_generated = true;
        }
        Ok(())
    }

    /// The configured node id, or a fresh random one.
    pub fn node_id_or_random(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("n-{:08x}", rand::random::<u32>()))
    }
}

/// Access tier: client listeners and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Private TCP protocol listener. Default `127.0.0.1:7070`.
    pub tcp_listen: SocketAddr,
    /// WebSocket listener (binary messages, path `/`). Default `127.0.0.1:7071`.
    pub ws_listen: SocketAddr,
    /// Listen backlog of both listeners. Default 4096 (tokio's 128 drops SYNs under connect bursts).
    pub listen_backlog: u32,
    /// Set `SO_REUSEPORT` so several processes can share the ports. Default false.
    pub reuse_port: bool,
    /// Most concurrent client connections; extra ones get `server_full`. Default 100000.
    pub max_connections: usize,
    /// Largest frame body accepted, bytes. Default 65536.
    pub max_frame_bytes: u32,
    /// Deepest MessagePack nesting accepted (the frame map counts 1). Default 16.
    pub max_nesting: usize,
    /// Time allowed for the transport handshake plus `Connect`, ms. Default 10000.
    pub auth_timeout_ms: u64,
    /// Heartbeat interval advised to clients, ms; silence for 3 intervals closes. Default 30000.
    pub heartbeat_ms: u64,
    /// Advised to clients: a `ping` not answered by `pong` within this long
    /// means the connection is dead (the node hangs); reconnect elsewhere, ms. Default 5000.
    pub pong_deadline_ms: u64,
    /// Route lease lifetime, ms; renewed every third of it while connected. Default 90000.
    pub route_ttl_ms: u64,
    /// Frames queued for one connection before it counts as a slow consumer and is closed. Default 256.
    pub outbound_queue: usize,
    /// Longest a write to a client may stall before the connection is closed, ms. Default 10000.
    pub write_timeout_ms: u64,
    /// Sustained frames per second a client may send. Default 100.
    pub frame_rate_per_s: u32,
    /// Burst of frames allowed above the sustained rate. Default 200.
    pub frame_burst: u32,
    /// Sockets not yet authenticated (WebSocket handshake and `connect`
    /// pending), node-wide, apart from `max_connections`. Default 1024.
    pub max_unauthenticated: usize,
    /// Of those, from one source address (an IPv6 /64). Default 256.
    pub max_unauthenticated_per_source: u32,
    /// New connections per second from one source address. Default 1000.
    pub connect_rate_per_source: u32,
    /// Burst of new connections from one source address. Default 2000.
    pub connect_burst_per_source: u32,
    /// Reconnect backoff advised to clients: first delay, ms. Default 1000.
    pub reconnect_min_ms: u64,
    /// Reconnect backoff advised to clients: largest delay, ms. Default 60000.
    pub reconnect_max_ms: u64,
    /// On shutdown, clients are told to reconnect after a random delay within this window, ms,
    /// so the remaining nodes see a spread of reconnects instead of a storm. Default 10000.
    pub goaway_window_ms: u64,
    /// Longest wait for connections to close on shutdown before they are dropped, ms. Default 15000.
    pub shutdown_grace_ms: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            listen_backlog: 4096,
            reuse_port: false,
            max_connections: 100_000,
            max_frame_bytes: 64 * 1024,
            max_nesting: 16,
            auth_timeout_ms: 10_000,
            heartbeat_ms: 30_000,
            pong_deadline_ms: 5_000,
            route_ttl_ms: 90_000,
            outbound_queue: 256,
            write_timeout_ms: 10_000,
            frame_rate_per_s: 100,
            frame_burst: 200,
            max_unauthenticated: 1024,
            max_unauthenticated_per_source: 256,
            connect_rate_per_source: 1_000,
            connect_burst_per_source: 2_000,
            reconnect_min_ms: 1_000,
            reconnect_max_ms: 60_000,
            goaway_window_ms: 10_000,
            shutdown_grace_ms: 15_000,
        }
    }
}

impl AccessConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let f = "access.";
        if self.max_connections == 0 {
            return Err(invalid(&format!("{f}max_connections"), "must be at least 1"));
        }
        self.limits()
            .validate()
            .map_err(|m| invalid(&format!("{f}max_frame_bytes/max_nesting"), m))?;
        if self.max_frame_bytes > 16 * 1024 * 1024 {
            return Err(invalid(&format!("{f}max_frame_bytes"), "must be at most 16 MiB"));
        }
        if self.max_nesting > MAX_NESTING_LIMIT {
            return Err(invalid(
                &format!("{f}max_nesting"),
                format!("must be at most {MAX_NESTING_LIMIT}"),
            ));
        }
        for (name, v) in [
            ("auth_timeout_ms", self.auth_timeout_ms),
            ("heartbeat_ms", self.heartbeat_ms),
            ("pong_deadline_ms", self.pong_deadline_ms),
            ("write_timeout_ms", self.write_timeout_ms),
            ("reconnect_min_ms", self.reconnect_min_ms),
        ] {
            if !(10..=3_600_000).contains(&v) {
                return Err(invalid(&format!("{f}{name}"), "must be within 10..=3600000 ms"));
            }
        }
        if self.route_ttl_ms < 2 * self.heartbeat_ms {
            return Err(invalid(
                &format!("{f}route_ttl_ms"),
                "must be at least twice heartbeat_ms",
            ));
        }
        if self.reconnect_max_ms < self.reconnect_min_ms {
            return Err(invalid(&format!("{f}reconnect_max_ms"), "must be >= reconnect_min_ms"));
        }
        if !(1..=65_536).contains(&self.outbound_queue) {
            return Err(invalid(&format!("{f}outbound_queue"), "must be within 1..=65536"));
        }
        if self.frame_rate_per_s == 0 || self.frame_burst == 0 {
            return Err(invalid(
                &format!("{f}frame_rate_per_s"),
                "rate and burst must be at least 1",
            ));
        }
        if self.max_unauthenticated == 0
            || self.max_unauthenticated_per_source == 0
            || self.connect_rate_per_source == 0
            || self.connect_burst_per_source == 0
        {
            return Err(invalid(
                &format!("{f}max_unauthenticated"),
                "the unauthenticated socket caps and the connect rate must be at least 1",
            ));
        }
        if !(1..=65_535).contains(&self.listen_backlog) {
            return Err(invalid(&format!("{f}listen_backlog"), "must be within 1..=65535"));
        }
        Ok(())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_frame_bytes: self.max_frame_bytes,
            max_depth: self.max_nesting,
        }
    }

    pub fn all_loopback(&self) -> bool {
        self.tcp_listen.ip().is_loopback() && self.ws_listen.ip().is_loopback()
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
    }
}

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
        Ok(())
    }
}

/// Accepted JWT signature algorithms; the configured one is the only one accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    HS256,
    RS256,
    ES256,
}

/// Client token verification.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// The only algorithm accepted. Default `HS256`.
    pub algorithm: JwtAlgorithm,
    /// HS256 shared secret, at least 32 bytes. Unset: a development secret, loopback only.
    pub secret: Option<String>,
    /// RS256/ES256 public key as PEM text.
    pub public_key: Option<String>,
    /// RS256/ES256 public key read from this PEM file (instead of `public_key`).
    pub public_key_file: Option<PathBuf>,
    /// Required `aud` claim, if set.
    pub audience: Option<String>,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Clock skew tolerated on `exp`/`nbf`, seconds. Default 30.
    pub leeway_s: u64,
    /// Every token must carry a `cid` claim equal to the connect's
    /// `client_id` (a `cid` that is present is always checked). Default false.
    pub require_client_claim: bool,
    /// After a live connection's token expires, how long the client has to
    /// send `refresh` with a new one before it is closed, seconds. Default 60.
    pub expiry_grace_s: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::HS256,
            secret: None,
            public_key: None,
            public_key_file: None,
            audience: None,
            issuer: None,
            leeway_s: 30,
            require_client_claim: false,
            expiry_grace_s: 60,
        }
    }
}

impl AuthConfig {
    /// Fills in the development secret where allowed and checks keys.
    pub fn resolve(&mut self, loopback_only: bool) -> Result<(), ConfigError> {
        if !(1..=3_600).contains(&self.expiry_grace_s) {
            return Err(invalid("auth.expiry_grace_s", "must be within 1..=3600 seconds"));
        }
        match self.algorithm {
            JwtAlgorithm::HS256 => match &self.secret {
                Some(s) if s.len() < 32 => {
                    return Err(invalid("auth.secret", "must be at least 32 bytes"));
                }
                Some(_) => {}
                None if loopback_only => self.secret = Some(DEV_SECRET.to_owned()),
                None => {
                    return Err(invalid(
                        "auth.secret",
                        "required when listening beyond loopback (set DUPLEX_AUTH__SECRET)",
                    ))
                }
            },
            JwtAlgorithm::RS256 | JwtAlgorithm::ES256 => {
                self.public_key_pem()?;
            }
        }
        Ok(())
    }

    /// The PEM text of the public key, from `public_key` or `public_key_file`.
    pub fn public_key_pem(&self) -> Result<String, ConfigError> {
        match (&self.public_key, &self.public_key_file) {
            (Some(pem), None) => Ok(pem.clone()),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map_err(|e| invalid("auth.public_key_file", format!("{}: {e}", path.display()))),
            (Some(_), Some(_)) => Err(invalid(
                "auth.public_key",
                "set public_key or public_key_file, not both",
            )),
            (None, None) => Err(invalid("auth.public_key", "required for RS256/ES256")),
        }
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
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7090)),
            token: None,
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
