//! The node registry: every node writes what it is, where clients reach it
//! and how loaded it is, under a lease it renews by heartbeat. A node that
//! stops renewing drops out when its lease ends. One hash in the store (one
//! key, so it works on Redis Cluster); expiry is checked on read.

use async_trait::async_trait;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::redis::conn::PubSubSource;
use crate::{MemoryStore, RedisStore, StoreError};

/// One node as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub node_id: String,
    pub tiers: Vec<String>,
    /// Where clients connect: `host:port` for TCP, `ws://host:port/` for WebSocket.
    pub tcp: String,
    pub ws: String,
    /// The TLS listeners, where the node has them: `host:port` for the
    /// private protocol over TLS, `wss://host:port/` for WebSocket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<String>,
    /// Base URL of the node's internal listener (`http://host:port`), for other nodes.
    #[serde(default)]
    pub internal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    pub connections: u64,
    pub max_connections: u64,
    /// The lease end, ms since the Unix epoch.
    pub expires_ms: u64,
}

#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Writes (or renews) `node`'s entry.
    async fn register_node(&self, node: &NodeInfo) -> Result<(), StoreError>;

    /// Removes a node at once (drain).
    async fn deregister_node(&self, node_id: &str) -> Result<(), StoreError>;

    /// Nodes whose lease has not ended at `now_ms`, by id.
    async fn nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, StoreError>;

    /// Tells every node that the registry changed (a node joined or left),
    /// so peers choose again at once instead of at their next read.
    async fn announce_nodes_changed(&self) -> Result<(), StoreError>;

    /// Announcements of any node, as they come; best effort (a peer that
    /// misses one still reads the registry every second).
    fn node_changes(&self) -> broadcast::Receiver<()>;
}

/// Where a store fans announcements out to this process's listeners.
#[derive(Debug, Clone)]
pub struct Announcements(broadcast::Sender<()>);

impl Default for Announcements {
    fn default() -> Self {
        Announcements(broadcast::channel(16).0)
    }
}

impl Announcements {
    pub(super) fn send(&self) {
        let _ = self.0.send(());
    }

    pub(super) fn subscribe(&self) -> broadcast::Receiver<()> {
        self.0.subscribe()
    }
}

fn live(entries: impl Iterator<Item = String>, now_ms: u64) -> (Vec<NodeInfo>, Vec<String>) {
    let (mut alive, mut dead) = (Vec::new(), Vec::new());
    for json in entries {
        match serde_json::from_str::<NodeInfo>(&json) {
            Ok(n) if n.expires_ms > now_ms => alive.push(n),
            Ok(n) => dead.push(n.node_id),
            Err(_) => {}
        }
    }
    alive.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    (alive, dead)
}

#[async_trait]
impl Registry for MemoryStore {
    async fn register_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let json = serde_json::to_string(node).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.nodes.insert(node.node_id.clone(), json);
        Ok(())
    }

    async fn deregister_node(&self, node_id: &str) -> Result<(), StoreError> {
        self.nodes.remove(node_id);
        Ok(())
    }

    async fn nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, StoreError> {
        let (alive, dead) = live(self.nodes.iter().map(|e| e.value().clone()), now_ms);
        for id in dead {
            self.nodes.remove(&id);
        }
        Ok(alive)
    }

    async fn announce_nodes_changed(&self) -> Result<(), StoreError> {
        self.announcements.send();
        Ok(())
    }

    fn node_changes(&self) -> broadcast::Receiver<()> {
        self.announcements.subscribe()
    }
}

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    fn registry_key(&self) -> String {
        format!("{}nodes", self.keys().prefix())
    }

    fn changes_channel(&self) -> String {
        format!("{}nodes:changed", self.keys().prefix())
    }

    /// Relays the channel to this process's listeners, reconnecting after
    /// failures, until nobody listens any more.
    async fn relay_changes(source: PubSubSource, channel: String, to: Announcements) {
        use futures_util::StreamExt;
        while to.0.receiver_count() > 0 {
            let subscribed = async {
                let mut pubsub = source.client().await?.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match subscribed.await {
                Ok(mut pubsub) => {
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        if to.0.send(()).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => tracing::debug!(error = %e, "registry announcements unavailable; retrying"),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

#[async_trait]
impl Registry for RedisStore {
    async fn register_node(&self, node: &NodeInfo) -> Result<(), StoreError> {
        let json = serde_json::to_string(node).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        self.conn()
            .hset::<_, _, _, ()>(self.registry_key(), &node.node_id, json)
            .await
            .map_err(unavailable)
    }

    async fn deregister_node(&self, node_id: &str) -> Result<(), StoreError> {
        self.conn()
            .hdel::<_, _, ()>(self.registry_key(), node_id)
            .await
            .map_err(unavailable)
    }

    async fn nodes(&self, now_ms: u64) -> Result<Vec<NodeInfo>, StoreError> {
        let all: Vec<String> = self.conn().hvals(self.registry_key()).await.map_err(unavailable)?;
        let (alive, dead) = live(all.into_iter(), now_ms);
        if !dead.is_empty() {
            self.conn()
                .hdel::<_, _, ()>(self.registry_key(), &dead)
                .await
                .map_err(unavailable)?;
        }
        Ok(alive)
    }

    async fn announce_nodes_changed(&self) -> Result<(), StoreError> {
        self.conn()
            .publish::<_, _, ()>(self.changes_channel(), "changed")
            .await
            .map_err(unavailable)
    }

    fn node_changes(&self) -> broadcast::Receiver<()> {
        let rx = self.announcements().subscribe();
        let relaying = self.relaying().swap(true, std::sync::atomic::Ordering::SeqCst);
        if !relaying {
            tokio::spawn(Self::relay_changes(
                self.pubsub(),
                self.changes_channel(),
                self.announcements().clone(),
            ));
        }
        rx
    }
}
