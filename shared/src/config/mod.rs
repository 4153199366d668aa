//! What every configuration section shares: the error that names the
//! field at fault, and the bounds of the HTTP listeners (push API, admin,
//! internal). Each tier crate owns its own section (`duplex_access::config`,
//! ...); `duplex_node::config` assembles a node's whole configuration.

mod http;

pub use http::HttpConfig;

/// A configuration that cannot be used, naming the field at fault.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("cannot load configuration: {0}")]
    Load(String),
}

pub fn invalid(field: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        message: message.into(),
    }
}
