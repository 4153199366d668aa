//! This node's entry in the registry: written at start, renewed every third
//! of the lease with the current load, removed at once when the node drains.
//! Readiness requires a fresh lease, so a node cut off from the store stops
//! taking new clients before its entry disappears.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use duplex_shared::metrics::Metrics;
use duplex_store::{now_ms, NodeInfo, Store};
use tokio_util::sync::CancellationToken;

/// When this node last renewed its entry (ms since the epoch), for readiness.
#[derive(Debug, Default, Clone)]
pub struct Freshness(Arc<AtomicU64>);

impl Freshness {
    pub fn fresh(&self, lease_ms: u64) -> bool {
        now_ms().saturating_sub(self.0.load(Ordering::Relaxed)) < lease_ms
    }
}

/// The host clients use to reach a listener on `listen`.
fn advertised(config: &Config, listen: SocketAddr) -> String {
    if let Some(h) = &config.registry.advertise_host {
        return format!("{h}:{}", listen.port());
    }
    let ip = if listen.ip().is_unspecified() {
        outward_ip().unwrap_or(listen.ip())
    } else {
        listen.ip()
    };
    SocketAddr::new(ip, listen.port()).to_string()
}

/// The address of the interface that routes outwards (no packet is sent).
fn outward_ip() -> Option<IpAddr> {
    let socket = UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:9").ok()?;
    Some(socket.local_addr().ok()?.ip()).filter(|ip| !ip.is_unspecified())
}

/// The entry of this node, for its bound listeners (the client ones when
/// the node runs the access tier).
pub fn entry(config: &Config, node_id: &str, tiers: &[&str], addresses: &crate::Addresses) -> NodeInfo {
    let (tcp, ws, max_connections) = match addresses.client {
        Some((tcp, ws)) => (
            advertised(config, tcp),
            format!("ws://{}/", advertised(config, ws)),
            config.access.max_connections as u64,
        ),
        None => (String::new(), String::new(), 0),
    };
    NodeInfo {
        node_id: node_id.to_owned(),
        tiers: tiers.iter().map(|t| (*t).to_owned()).collect(),
        tcp,
        ws,
        tls: addresses.client_tls.map(|a| advertised(config, a)),
        wss: addresses
            .client_wss
            .map(|a| format!("wss://{}/", advertised(config, a))),
        internal: format!("http://{}", advertised(config, addresses.internal)),
        region: config.registry.region.clone(),
        connections: 0,
        max_connections,
        expires_ms: 0,
    }
}

/// Writes `node` with a lease from now; on success the node counts as registered.
pub async fn register(
    store: &dyn Store,
    node: &mut NodeInfo,
    lease_ms: u64,
    fresh: &Freshness,
) -> Result<(), duplex_store::StoreError> {
    let now = now_ms();
    node.expires_ms = now + lease_ms;
    store.register_node(node).await?;
    fresh.0.store(now, Ordering::Relaxed);
    Ok(())
}

/// Renews `node` until `stop`, then removes it.
pub async fn heartbeat(
    store: Arc<dyn Store>,
    metrics: Arc<Metrics>,
    mut node: NodeInfo,
    lease_ms: u64,
    fresh: Freshness,
    stop: CancellationToken,
) {
    let connections = [
        metrics.counter("duplex_connections", &[("transport", "tcp")]),
        metrics.counter("duplex_connections", &[("transport", "ws")]),
    ];
    let mut announced = false;
    loop {
        node.connections = connections.iter().map(|c| c.get().max(0) as u64).sum();
        match register(&*store, &mut node, lease_ms, &fresh).await {
            // Peers re-read the registry at once instead of within their next second.
            Ok(()) if !announced => announced = store.announce_nodes_changed().await.is_ok(),
            Ok(()) => {}
            Err(e) => tracing::warn!(error = %e, "cannot renew this node's registry entry"),
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(lease_ms / 3)) => {}
        }
    }
    match store.deregister_node(&node.node_id).await {
        Ok(()) => {
            let _ = store.announce_nodes_changed().await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot remove this node's registry entry; it lapses with its lease"),
    }
}
