//! A whole Duplex node as a library: the store, the links between tiers
//! (in process, or over the network in split mode), every tier the node
//! runs, its registry heartbeat and its admin listener. The binary and the
//! tests build nodes through [`Node::start`], so both wire them the same way.
//!
//! # Layout
//! - [`links`]: the node-to-node wire contract, client and server side in one
//!   place (`cluster`: deliveries to access nodes; `remote`: uploads,
//!   requests and replies between tiers; `peers`: picking a node of a tier).
//! - `wiring`: what [`Node::start`] builds, step by step.
//! - `registry`: this node's registry entry and heartbeat.
//! - `admin`: the admin listener (metrics, health, admin API, dashboard).

mod admin;
pub mod config;
pub mod links;
mod registry;
mod wiring;

use std::net::SocketAddr;
use std::sync::Arc;

use duplex_access::Hub;
use duplex_shared::metrics::Metrics;
use duplex_store::Store;
use duplex_upstream::Upstream;

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

pub use wiring::{NodeLinkWrapper, Wiring};

/// Which tiers a node runs: all of them (the default), or one (split mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiers {
    pub access: bool,
    pub upstream: bool,
    pub downstream: bool,
}

impl Tiers {
    pub const ALL: Tiers = Tiers {
        access: true,
        upstream: true,
        downstream: true,
    };
    pub const NONE: Tiers = Tiers {
        access: false,
        upstream: false,
        downstream: false,
    };
    pub const ACCESS: Tiers = Tiers {
        access: true,
        ..Tiers::NONE
    };
    pub const UPSTREAM: Tiers = Tiers {
        upstream: true,
        ..Tiers::NONE
    };
    pub const DOWNSTREAM: Tiers = Tiers {
        downstream: true,
        ..Tiers::NONE
    };

    pub fn names(&self) -> Vec<&'static str> {
        [
            (self.access, "access"),
            (self.upstream, "upstream"),
            (self.downstream, "downstream"),
        ]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
    }

    fn split(&self) -> bool {
        *self != Tiers::ALL
    }
}

/// Why a node did not start; each maps to the binary's documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration cannot run (exit 64); the operator must change it.
    #[error("{0}")]
    Config(String),
    /// Redis did not answer (exit 69); starting again later may work.
    #[error("{0}")]
    StoreUnavailable(String),
    /// A listener could not be bound (exit 71).
    #[error("{0}")]
    CannotListen(String),
    /// This node failed to build a part of itself (exit 70).
    #[error("{0}")]
    Internal(String),
}

impl StartError {
    /// The exit code documented in docs/OPERATIONS.md.
    pub fn exit_code(&self) -> u8 {
        match self {
            StartError::Config(_) => 64,
            StartError::StoreUnavailable(_) => 69,
            StartError::CannotListen(_) => 71,
            StartError::Internal(_) => 70,
        }
    }
}

/// Where a started node listens.
#[derive(Debug, Clone, Copy)]
pub struct Addresses {
    /// Client TCP and WebSocket listeners (access tier).
    pub client: Option<(SocketAddr, SocketAddr)>,
    /// The private protocol over TLS, and WebSocket over TLS, where configured.
    pub client_tls: Option<SocketAddr>,
    pub client_wss: Option<SocketAddr>,
    /// Push API (downstream tier).
    pub push_api: Option<SocketAddr>,
    pub internal: SocketAddr,
    /// Whether the internal listener speaks HTTPS (`registry.internal_tls`).
    pub internal_tls: bool,
    pub admin: SocketAddr,
}

/// A tier's task ended by a panic instead of returning.
#[derive(Debug, thiserror::Error)]
#[error("a tier ended abnormally during shutdown")]
pub struct TierFailed;

/// A started node: every task it runs, and what stops them.
pub struct Node {
    pub node_id: String,
    pub tiers: Tiers,
    pub addresses: Addresses,
    /// `memory` or `redis`.
    pub store_kind: &'static str,
    pub store: Arc<dyn Store>,
    pub metrics: Arc<Metrics>,
    /// The access tier's connections (empty on a node without it).
    pub hub: Arc<Hub>,
    pub upstream: Option<Arc<Upstream>>,
    shutdown: CancellationToken,
    tasks: wiring::Tasks,
}

impl Node {
    /// Builds and starts a node running `tiers` (see [`Wiring`] for what a
    /// test may put in place of the defaults).
    pub async fn start(config: crate::config::Config, tiers: Tiers, wiring: Wiring) -> Result<Node, StartError> {
        wiring::start(config, tiers, wiring).await
    }

    /// What an operator reads first: where each listener is.
    pub fn banner(&self) -> String {
        let a = &self.addresses;
        let mut banner = format!(
            "duplex node {} ({}, {} store)\n",
            self.node_id,
            if self.tiers.split() {
                self.tiers.names().join(", ")
            } else {
                "all tiers".into()
            },
            self.store_kind
        );
        if let Some((tcp, ws)) = a.client {
            banner += &format!("  client tcp:       {tcp}\n  client websocket: ws://{ws}/\n");
        }
        if let Some(tls) = a.client_tls {
            banner += &format!("  client tls:       tls://{tls}\n");
        }
        if let Some(wss) = a.client_wss {
            banner += &format!("  client wss:       wss://{wss}/\n");
        }
        if let Some(push) = a.push_api {
            banner += &format!("  push API:         http://{push}/v1/push\n");
        }
        banner += &format!(
            "  internal:         {}://{}\n  admin:            http://{}/metrics\n",
            if a.internal_tls { "https" } else { "http" },
            a.internal,
            a.admin
        );
        if self.tiers.access {
            banner += "  mint a token:     duplex token --sub alice\n";
        }
        banner
    }

    /// Starts draining without waiting for it (see [`Node::stop`]).
    pub fn begin_stop(&self) {
        self.shutdown.cancel();
    }

    /// Drains and stops: the access tier says GoAway, the stateless tiers
    /// finish what they hold, the entry leaves the registry at once.
    pub async fn stop(self) -> Result<(), TierFailed> {
        info!("shutting down");
        self.shutdown.cancel();
        let failed = self.tasks.join().await;
        if failed {
            error!("a tier ended abnormally during shutdown");
            return Err(TierFailed);
        }
        Ok(())
    }
}
