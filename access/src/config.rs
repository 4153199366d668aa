//! The access tier's configuration: client listeners, per-connection
//! limits, and how tokens are verified.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use duplex_shared::config::{invalid, ConfigError};
use duplex_shared::protocol::{Limits, LimitsError, MAX_NESTING_LIMIT};
use serde::{Deserialize, Serialize};

/// HS256 secret used when none is configured. Accepted only while every
/// listener is on a loopback address, so it can never guard a reachable node.
pub const DEV_SECRET: &str = "duplex-development-secret-do-not-deploy";

/// Access tier: client listeners and per-connection limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// Private TCP protocol listener. Default `127.0.0.1:7070`.
    pub tcp_listen: SocketAddr,
    /// WebSocket listener (binary messages, path `/`). Default `127.0.0.1:7071`.
    pub ws_listen: SocketAddr,
    /// Private TCP protocol over TLS (ALPN `duplex/1`); needs `access.tls`. Default: none.
    pub tls_listen: Option<SocketAddr>,
    /// WebSocket over TLS (`wss://`); needs `access.tls`. Default: none.
    pub wss_listen: Option<SocketAddr>,
    /// Certificate of the TLS listeners, reloaded on SIGHUP and when the files change.
    pub tls: Option<TlsConfig>,
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
    /// Most bytes one read of a WebSocket connection takes; its read buffer
    /// starts this large and is kept for the connection's life. Default 512
    /// (idle connections are the common case; larger speeds up big uploads).
    pub ws_read_buffer_bytes: usize,
    /// Time allowed for the transport handshake plus `Connect`, ms. Default 10000.
    pub auth_timeout_ms: u64,
    /// Heartbeat interval advised to clients, ms; silence for 3 intervals closes. Default 30000.
    pub heartbeat_ms: u64,
    /// Advised to clients: a `ping` not answered by `pong` within this long
    /// means the connection is dead (the node hangs); reconnect elsewhere, ms. Default 5000.
    pub pong_deadline_ms: u64,
    /// Route lease lifetime, ms; renewed every third of it while connected. Default 90000.
    pub route_ttl_ms: u64,
    /// Frames queued for one connection; stored messages beyond it are written from the store
    /// once it drains, qos-0 ones are dropped. Default 256.
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

/// The TLS listeners' certificate (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            tcp_listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            ws_listen: SocketAddr::from(([127, 0, 0, 1], 7071)),
            tls_listen: None,
            wss_listen: None,
            tls: None,
            listen_backlog: 4096,
            reuse_port: false,
            max_connections: 100_000,
            max_frame_bytes: 64 * 1024,
            max_nesting: 16,
            ws_read_buffer_bytes: 512,
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
        let tls_listener = self.tls_listen.is_some() || self.wss_listen.is_some();
        match &self.tls {
            None if tls_listener => {
                return Err(invalid(
                    &format!("{f}tls"),
                    "tls_listen and wss_listen need access.tls.cert_file and key_file",
                ))
            }
            Some(_) if !tls_listener => {
                return Err(invalid(
                    &format!("{f}tls"),
                    "set access.tls_listen and/or access.wss_listen to serve TLS",
                ))
            }
            _ => {}
        }
        self.limits().validate().map_err(|e| {
            let key = match e {
                LimitsError::FrameTooSmall => "max_frame_bytes",
                LimitsError::DepthOutOfRange => "max_nesting",
            };
            invalid(&format!("{f}{key}"), e.to_string())
        })?;
        if self.max_frame_bytes > 16 * 1024 * 1024 {
            return Err(invalid(&format!("{f}max_frame_bytes"), "must be at most 16 MiB"));
        }
        if !(64..=1024 * 1024).contains(&self.ws_read_buffer_bytes) {
            return Err(invalid(
                &format!("{f}ws_read_buffer_bytes"),
                "must be within 64..=1048576",
            ));
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
        [
            Some(self.tcp_listen),
            Some(self.ws_listen),
            self.tls_listen,
            self.wss_listen,
        ]
        .into_iter()
        .flatten()
        .all(|a| a.ip().is_loopback())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_millis(self.heartbeat_ms)
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
