//! How a node announces itself in the registry (clients find access nodes
//! through `GET /v1/nodes`).

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError};

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
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            advertise_host: None,
            region: None,
            lease_ms: 15_000,
        }
    }
}

impl RegistryConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ms < 300 {
            return Err(invalid("registry.lease_ms", "at least 300"));
        }
        if let Some(h) = &self.advertise_host {
            if h.is_empty() || h.contains(['/', ' ', '@']) {
                return Err(invalid("registry.advertise_host", "a host name or IP address"));
            }
        }
        Ok(())
    }
}
