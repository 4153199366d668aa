//! Command line and configuration loading: defaults, then the TOML file
//! (`--config`), then `DUPLEX_*` environment variables (`__` separates
//! sections: `DUPLEX_ACCESS__TCP_LISTEN`), then flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use duplex_node::config::{Config, ConfigError};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;

#[derive(Debug, Parser)]
#[command(
    name = "duplex",
    version,
    about = "Duplex: a duplex message-channel gateway for mobile apps"
)]
pub struct Cli {
    #[command(flatten)]
    pub config: ConfigFlags,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every tier in this process (the default when no command is given).
    Run,
    /// Run only the access tier (client connections); split mode, needs Redis.
    Access,
    /// Run only the upstream tier (client frames to backends); split mode, needs Redis.
    Upstream,
    /// Run only the downstream tier (push API, delivery); split mode, needs Redis.
    Downstream,
    /// Mint a development token (HS256) from the configured secret and print it.
    Token(TokenArgs),
    /// Check the configuration (file, environment, flags) and print every problem; exit 64 if any.
    CheckConfig,
    /// Certificates for trying TLS (`duplex cert dev`).
    #[command(subcommand)]
    Cert(crate::cert::CertCommand),
    /// Connect like an app and print pushes as JSON lines.
    Client(Box<crate::client_cli::ClientArgs>),
    /// Load generators (runs `duplex-bench`); they only ever target 127.0.0.0/8.
    Bench(crate::bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// User id (`sub` claim).
    #[arg(long)]
    pub sub: String,
    /// Lifetime in seconds.
    #[arg(long, default_value_t = 24 * 3600)]
    pub ttl: u64,
}

#[derive(Debug, Args)]
pub struct ConfigFlags {
    /// TOML configuration file.
    #[arg(long, global = true, env = "DUPLEX_CONFIG")]
    pub config: Option<PathBuf>,
    /// Redis URL; switches from the in-memory store to Redis.
    #[arg(long, global = true)]
    pub redis: Option<String>,
    /// Node id (default: random).
    #[arg(long, global = true)]
    pub node_id: Option<String>,
    /// Address of the private TCP protocol listener.
    #[arg(long, global = true)]
    pub tcp_listen: Option<SocketAddr>,
    /// Address of the WebSocket listener.
    #[arg(long, global = true)]
    pub ws_listen: Option<SocketAddr>,
    /// Address of the push API (HTTP) listener.
    #[arg(long, global = true)]
    pub http_listen: Option<SocketAddr>,
    /// Address of the admin listener (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, global = true)]
    pub admin_listen: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long, global = true)]
    pub log_format: Option<String>,
}

/// A configuration as read (the caller validates it: `Config::validate`, or
/// `Config::problems` for `check-config`), and the `DUPLEX_*` variables it
/// ignored (they name no key; see `env_keys`), for the caller to warn about.
pub struct Loaded {
    pub config: Config,
    pub ignored_variables: Vec<String>,
}

/// Reads the configuration from its sources.
pub fn load_config(flags: &ConfigFlags) -> Result<Loaded, ConfigError> {
    let schema = std::sync::Arc::new(crate::env_keys::Schema::new(&Config::default()));
    let ignored_variables = schema.unknown_variables(std::env::vars().map(|(name, _)| name));
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(path) = &flags.config {
        if !path.is_file() {
            return Err(ConfigError::Load(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        figment = figment.merge(Toml::file(path));
    }
    let known = schema.clone();
    figment = figment.merge(
        Env::prefixed("DUPLEX_")
            .ignore(&["CONFIG", "TOKEN"])
            .split("__")
            .filter(move |key| known.knows(&key.as_str().to_ascii_lowercase())),
    );
    if let Some(v) = &flags.redis {
        figment = figment.merge(("redis_url", v));
    }
    if let Some(v) = &flags.node_id {
        figment = figment.merge(("node_id", v));
    }
    if let Some(v) = &flags.tcp_listen {
        figment = figment.merge(("access.tcp_listen", v.to_string()));
    }
    if let Some(v) = &flags.ws_listen {
        figment = figment.merge(("access.ws_listen", v.to_string()));
    }
    if let Some(v) = &flags.http_listen {
        figment = figment.merge(("downstream.http_listen", v.to_string()));
    }
    if let Some(v) = &flags.admin_listen {
        figment = figment.merge(("admin.listen", v.to_string()));
    }
    if let Some(v) = &flags.log_format {
        figment = figment.merge(("log.format", v));
    }
    let config: Config = figment.extract().map_err(|e| ConfigError::Load(e.to_string()))?;
    Ok(Loaded {
        config,
        ignored_variables,
    })
}
