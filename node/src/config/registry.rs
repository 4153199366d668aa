//! How a node announces itself in the registry (clients find access nodes
//! through `GET /v1/nodes`).

use serde::{Deserialize, Serialize};

use duplex_shared::config::{invalid, ConfigError};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// Host clients use to reach this node's listeners. Unset: the listen address when it
    /// names one, else the address of the interface that routes outwards (detected at start).
    pub advertise_host: Option<String>,
    /// Optional region label shown to clients in `GET /v1/nodes`.
    pub region: Option<String>,
    /// Lease of this node's registry entry, ms; renewed every third of it. Default 15000.
    pub lease_ms: u64,
    /// Internal listener other nodes deliver, kick and broadcast through (HTTP, never
    /// for clients or backends). Default `127.0.0.1:0` (any free port; nodes on one host).
    pub internal_listen: std::net::SocketAddr,
    /// Shared secret of internal calls between nodes, at least 16 bytes; the same on every
    /// node. Required when `internal_listen` is not a loopback address.
    pub internal_secret: Option<String>,
    /// TLS of the internal listener and of this node's calls to the others'
    /// (every node of a deployment sets it, with certificates from one CA).
    pub internal_tls: Option<InternalTls>,
    /// Set when validation chose a random `internal_secret` (real secrets
    /// are configured but this one is not): fine alone, not for split nodes.
    #[serde(skip)]
    pub internal_secret_generated: bool,
}

/// Certificates of node-to-node traffic (PEM files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InternalTls {
    /// This node's certificate chain, for the host it advertises.
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// The CA the other nodes' certificates are signed by.
    pub ca_file: std::path::PathBuf,
}

/// Internal secret used when none is configured, accepted only on a loopback internal listener.
pub const DEV_INTERNAL_SECRET: &str = "duplex-development-internal-secret";

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            advertise_host: None,
            region: None,
            lease_ms: 15_000,
            internal_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            internal_secret: None,
            internal_tls: None,
            internal_secret_generated: false,
        }
    }
}

impl RegistryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ms < 300 {
            return Err(invalid("registry.lease_ms", "at least 300"));
        }
        match &self.internal_secret {
            Some(s) if s.len() < 16 => return Err(invalid("registry.internal_secret", "at least 16 bytes")),
            None if !self.internal_listen.ip().is_loopback() => {
                return Err(invalid(
                    "registry.internal_secret",
                    "required when registry.internal_listen is not a loopback address",
                ))
            }
            _ => {}
        }
        if let Some(h) = &self.advertise_host {
            if h.is_empty() || h.contains(['/', ' ', '@']) {
                return Err(invalid("registry.advertise_host", "a host name or IP address"));
            }
        }
        Ok(())
    }
}

impl RegistryConfig {
    /// The internal secret in force (the development one on loopback).
    pub fn secret(&self) -> &str {
        self.internal_secret.as_deref().unwrap_or(DEV_INTERNAL_SECRET)
    }
}
