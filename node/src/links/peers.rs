//! Other nodes as the registry lists them, and how a node picks one of a
//! tier to call: power of two choices on calls in flight, with nodes that
//! failed a call ejected for a doubling backoff. The registry lease is the
//! health check: a node that stops heartbeating drops out of the list, and
//! joins and drains are announced so every peer sees them at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use duplex_shared::links::LinkError;
use duplex_store::{now_ms, NodeInfo, Store};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

/// How long the registry's view of peers is reused before it is read again.
const PEERS_TTL: Duration = Duration::from_secs(1);
const FIRST_EJECTION: Duration = Duration::from_millis(500);
const LONGEST_EJECTION: Duration = Duration::from_secs(30);

pub struct Peers {
    store: Arc<dyn Store>,
    cached: Mutex<(Option<Instant>, Arc<Vec<NodeInfo>>)>,
    health: Mutex<HashMap<String, PeerHealth>>,
}

#[derive(Default)]
struct PeerHealth {
    in_flight: u32,
    ejected_until: Option<Instant>,
    backoff: Duration,
}

/// A call in flight to a peer; counts towards its load until dropped.
pub struct PeerCall<'a> {
    peers: &'a Peers,
    pub node_id: String,
    pub base: String,
}

impl Drop for PeerCall<'_> {
    fn drop(&mut self) {
        if let Some(h) = self.peers.lock_health().get_mut(&self.node_id) {
            h.in_flight = h.in_flight.saturating_sub(1);
        }
    }
}

impl Peers {
    /// Also follows the registry's announcements: a node joining or leaving
    /// anywhere drops the cached view, so the next call reads it afresh.
    pub fn new(store: Arc<dyn Store>) -> Arc<Self> {
        let mut changes = store.node_changes();
        let peers = Arc::new(Peers {
            store,
            cached: Mutex::new((None, Arc::new(Vec::new()))),
            health: Mutex::new(HashMap::new()),
        });
        let follower = Arc::downgrade(&peers);
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(()) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
                let Some(peers) = follower.upgrade() else { return };
                peers.forget_view();
            }
        });
        peers
    }

    fn forget_view(&self) {
        self.cached.lock().unwrap_or_else(|p| p.into_inner()).0 = None;
    }

    fn lock_health(&self) -> std::sync::MutexGuard<'_, HashMap<String, PeerHealth>> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every live node with an internal listener.
    pub async fn all(&self) -> Result<Arc<Vec<NodeInfo>>, LinkError> {
        {
            let c = self.cached.lock().unwrap_or_else(|p| p.into_inner());
            if c.0.is_some_and(|at| at.elapsed() < PEERS_TTL) {
                return Ok(c.1.clone());
            }
        }
        let mut nodes = self
            .store
            .nodes(now_ms())
            .await
            .map_err(|e| LinkError::Unavailable(format!("registry: {e}")))?;
        nodes.retain(|n| !n.internal.is_empty());
        let nodes = Arc::new(nodes);
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) = (Some(Instant::now()), nodes.clone());
        Ok(nodes)
    }

    /// The internal base URL of `node_id`.
    pub async fn base_of(&self, node_id: &str) -> Result<String, LinkError> {
        self.all()
            .await?
            .iter()
            .find(|n| n.node_id == node_id)
            .map(|n| n.internal.clone())
            .ok_or_else(|| LinkError::Unavailable(format!("node {node_id} is not in the registry")))
    }

    /// Picks a node of `tier`, not in `exclude`, preferring the less busy of
    /// two at random; ejected nodes only when nothing else is left.
    pub async fn pick(&self, tier: &str, exclude: &[String]) -> Result<PeerCall<'_>, LinkError> {
        let mut nodes = self.all().await?;
        let eligible = |n: &NodeInfo| n.tiers.iter().any(|t| t == tier) && !exclude.contains(&n.node_id);
        if !nodes.iter().any(eligible) {
            // Nothing left in a view up to a second old: a node may have joined since.
            self.forget_view();
            nodes = self.all().await?;
        }
        let candidates: Vec<&NodeInfo> = nodes.iter().filter(|n| eligible(n)).collect();
        if candidates.is_empty() {
            return Err(LinkError::Unavailable(format!("no {tier} node is available")));
        }
        let now = Instant::now();
        let mut health = self.lock_health();
        let up: Vec<&NodeInfo> = candidates
            .iter()
            .copied()
            .filter(|n| {
                health
                    .get(&n.node_id)
                    .and_then(|h| h.ejected_until)
                    .is_none_or(|t| t <= now)
            })
            .collect();
        let pool = if up.is_empty() { &candidates } else { &up };
        let load = |n: &NodeInfo| health.get(&n.node_id).map_or(0, |h| h.in_flight);
        let a = pool[rand::random::<usize>() % pool.len()];
        let b = pool[rand::random::<usize>() % pool.len()];
        let chosen = if load(b) < load(a) { b } else { a };
        health.entry(chosen.node_id.clone()).or_default().in_flight += 1;
        Ok(PeerCall {
            peers: self,
            node_id: chosen.node_id.clone(),
            base: chosen.internal.clone(),
        })
    }

    /// Records the outcome of a call to `node_id`: a failure ejects it for a
    /// doubling backoff, a success readmits it.
    pub fn record(&self, node_id: &str, ok: bool) {
        let mut health = self.lock_health();
        let h = health.entry(node_id.to_owned()).or_default();
        if ok {
            h.ejected_until = None;
            h.backoff = Duration::ZERO;
        } else {
            h.backoff = (h.backoff * 2).clamp(FIRST_EJECTION, LONGEST_EJECTION);
            h.ejected_until = Some(Instant::now() + h.backoff);
            tracing::warn!(
                node = node_id,
                backoff_ms = h.backoff.as_millis() as u64,
                "peer node ejected after a failed call"
            );
        }
    }
}
