//! In-memory store for single-node mode: the same contract as Redis, held in
//! `dashmap`s. Lease expiry uses `tokio::time`, so tests can pause the clock.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::time::Instant;

mod expiry;
mod fallbacks;
mod push_tokens;
pub(crate) mod queue;
mod sweep;
pub(crate) mod upstream;

use crate::{
    Claim, ClaimError, Enqueued, ExpiredScan, LeaseCheck, MessageQueue, MessageStatus, NewMessage, Pending, QueueInfo,
    QueueLimits, Renewal, Route, Routes, Store, StoreError, USER_CLIENTS_TTL,
};
use queue::ClientQueue;
pub use sweep::MemoryHeld;

/// Who a client id belongs to, and its connection counter.
#[derive(Debug)]
pub(crate) struct ClientIdentity {
    epoch: u64,
    owner: String,
    /// The owner is kept until then, and beyond while the queue holds messages.
    pub(crate) owner_until: Instant,
}

/// A route as held here: the node's id is shared by all of its routes.
#[derive(Debug)]
pub(crate) struct HeldRoute {
    node_id: Arc<str>,
    conn_epoch: u64,
    pub(crate) expires: Instant,
}

impl HeldRoute {
    fn route(&self) -> Route {
        Route {
            node_id: self.node_id.to_string(),
            conn_epoch: self.conn_epoch,
        }
    }

    fn is(&self, route: &Route) -> bool {
        self.conn_epoch == route.conn_epoch && *self.node_id == *route.node_id
    }
}

/// Node ids interned for routes; past this many distinct ids (never in a
/// real deployment) routes get their own copy instead.
const MAX_INTERNED_NODES: usize = 4096;

/// Every connected client costs an entry in `routes`, `identities` and its
/// user's set: the three share one allocation of its id (`Arc<str>` keys),
/// and routes share their node's id, so the store's part of an idle
/// connection stays small (docs/BENCHMARKS.md).
#[derive(Debug, Default)]
pub struct MemoryStore {
    pub(crate) routes: DashMap<Arc<str>, HeldRoute>,
    pub(crate) identities: DashMap<Arc<str>, ClientIdentity>,
    pub(crate) queues: DashMap<String, ClientQueue>,
    pub(crate) users: DashMap<String, (HashSet<Arc<str>>, Instant)>,
    node_ids: std::sync::RwLock<HashSet<Arc<str>>>,
    /// When idle clients were last looked for (see `sweep`).
    pub(crate) last_sweep: std::sync::Mutex<Option<Instant>>,
    pub(crate) upstream: upstream::MemoryUpstream,
    /// The node registry: node id -> its entry (JSON, as in Redis).
    pub(crate) nodes: DashMap<String, String>,
    pub(crate) announcements: crate::registry::Announcements,
    /// (earliest expiry, client) of every client whose expiries are reported
    /// (`expiry.rs`); locked after a queue entry, never before.
    pub(crate) expiry_index: std::sync::Mutex<std::collections::BTreeSet<(u64, String)>>,
    /// Each client's OS push tokens (`push_tokens.rs`).
    pub(crate) push_tokens: DashMap<String, Vec<crate::PushToken>>,
    /// The push fallback's schedule (`fallbacks.rs`).
    pub(crate) fallbacks: std::sync::Mutex<fallbacks::MemoryFallbacks>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&self, client_id: &str) -> dashmap::mapref::one::RefMut<'_, String, ClientQueue> {
        self.queues.entry(client_id.to_owned()).or_default()
    }

    fn node_id(&self, node_id: &str) -> Arc<str> {
        let read = self.node_ids.read().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = read.get(node_id) {
            return id.clone();
        }
        let full = read.len() >= MAX_INTERNED_NODES;
        drop(read);
        let id: Arc<str> = Arc::from(node_id);
        if !full {
            let mut write = self.node_ids.write().unwrap_or_else(|p| p.into_inner());
            if let Some(id) = write.get(node_id) {
                return id.clone();
            }
            write.insert(id.clone());
        }
        id
    }
}

#[async_trait]
impl Routes for MemoryStore {
    async fn claim_route_after(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
        last_seq: u64,
    ) -> Result<Claim, ClaimError> {
        self.sweep_if_due(crate::now_ms());
        let now = Instant::now();
        // The identity entry's lock makes the owner check, epoch assignment
        // and route write one step.
        let mut identity = self
            .identities
            .entry(Arc::from(client_id))
            .or_insert_with(|| ClientIdentity {
                epoch: 0,
                owner: user_id.to_owned(),
                owner_until: now,
            });
        if identity.owner != user_id {
            let owner_lives =
                identity.owner_until > now || self.queues.get(client_id).is_some_and(|q| q.holds_messages());
            if owner_lives {
                return Err(ClaimError::Taken);
            }
            identity.owner = user_id.to_owned();
        }
        identity.owner_until = now + USER_CLIENTS_TTL;
        identity.epoch += 1;
        if last_seq > 0 {
            self.queue(client_id)
                .raise_seq(last_seq.min(duplex_protocol::MAX_LAST_SEQ));
        }
        let route = Route {
            node_id: node_id.to_owned(),
            conn_epoch: identity.epoch,
        };
        let key = identity.key().clone();
        let held = HeldRoute {
            node_id: self.node_id(node_id),
            conn_epoch: identity.epoch,
            expires: now + ttl,
        };
        let previous = match self.routes.insert(key.clone(), held) {
            Some(old) if old.expires > now => Some(old.route()),
            _ => None,
        };
        drop(identity);
        let mut user = self
            .users
            .entry(user_id.to_owned())
            .or_insert_with(|| (HashSet::new(), now));
        if user.1 <= now {
            user.0.clear();
        }
        user.0.insert(key);
        user.1 = now + USER_CLIENTS_TTL;
        Ok(Claim { route, previous })
    }

    async fn client_owner(&self, client_id: &str) -> Result<Option<String>, StoreError> {
        let now = Instant::now();
        Ok(self.identities.get(client_id).and_then(|i| {
            let lives = i.owner_until > now || self.queues.get(client_id).is_some_and(|q| q.holds_messages());
            lives.then(|| i.owner.clone())
        }))
    }

    async fn get_route(&self, client_id: &str) -> Result<Option<Route>, StoreError> {
        let now = Instant::now();
        Ok(self
            .routes
            .get(client_id)
            .filter(|e| e.expires > now)
            .map(|e| e.route()))
    }

    async fn release_route(&self, client_id: &str, route: &Route) -> Result<bool, StoreError> {
        Ok(self
            .routes
            .remove_if(client_id, |_, current| current.is(route))
            .is_some())
    }

    async fn refresh_routes(&self, routes: &[(String, Route)], ttl: Duration) -> Result<Vec<LeaseCheck>, StoreError> {
        let now = Instant::now();
        // Expired leases are dropped first, so the map does not keep dead clients.
        self.routes.retain(|_, held| held.expires > now);
        let mut out = Vec::with_capacity(routes.len());
        for (client_id, route) in routes {
            let mut slot = match self.routes.get_mut(client_id.as_str()) {
                Some(slot) => slot,
                None => self
                    .routes
                    .entry(Arc::from(client_id.as_str()))
                    .or_insert_with(|| HeldRoute {
                        node_id: self.node_id(&route.node_id),
                        conn_epoch: route.conn_epoch,
                        expires: now,
                    }),
            };
            let renewal = if slot.is(route) {
                let restored = slot.expires <= now;
                slot.expires = now + ttl;
                if restored {
                    Renewal::Restored
                } else {
                    Renewal::Renewed
                }
            } else {
                Renewal::Replaced
            };
            drop(slot);
            if renewal != Renewal::Replaced {
                if let Some(mut identity) = self.identities.get_mut(client_id.as_str()) {
                    identity.owner_until = identity.owner_until.max(now + USER_CLIENTS_TTL);
                }
            }
            let last_seq = self.queues.get(client_id).map_or(0, |q| q.last_seq());
            out.push(LeaseCheck { renewal, last_seq });
        }
        Ok(out)
    }

    async fn user_clients(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        Ok(self
            .users
            .get(user_id)
            .filter(|e| e.1 > now)
            .map(|e| e.0.iter().map(|c| c.to_string()).collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl MessageQueue for MemoryStore {
    async fn enqueue(
        &self,
        client_id: &str,
        msg: &NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Result<Enqueued, StoreError> {
        self.sweep_if_due(now_ms);
        let mut outcome = {
            let mut queue = self.queue(client_id);
            let outcome = queue.enqueue(client_id, msg, limits, now_ms);
            if msg.report_expiry {
                self.reindex(client_id, &mut queue);
            }
            outcome
        };
        if let Enqueued::Stored { route, .. } = &mut outcome {
            *route = self.get_route(client_id).await?;
        }
        Ok(outcome)
    }

    async fn pending(&self, client_id: &str, after: u64, max: usize, now_ms: u64) -> Result<Pending, StoreError> {
        // A client that never had a message gets no queue entry just for asking.
        Ok(self
            .queues
            .get_mut(client_id)
            .map(|mut q| q.pending(client_id, after, max, now_ms))
            .unwrap_or_default())
    }

    async fn ack(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self.queue(client_id).ack(seq, now_ms))
    }

    async fn resume(&self, client_id: &str, last_seq: u64, now_ms: u64) -> Result<u64, StoreError> {
        Ok(self
            .queue(client_id)
            .resume(last_seq.min(duplex_protocol::MAX_LAST_SEQ), now_ms))
    }

    async fn note_written(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        if let Some(mut q) = self.queues.get_mut(client_id) {
            q.note_written(seq);
        }
        Ok(())
    }

    async fn mark_sent(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<(), StoreError> {
        self.queue(client_id).mark_sent(seq, now_ms);
        Ok(())
    }

    async fn note_fallback(&self, client_id: &str, seq: u64, outcome: &str, now_ms: u64) -> Result<(), StoreError> {
        if let Some(mut q) = self.queues.get_mut(client_id) {
            q.note_fallback(seq, outcome, now_ms);
        }
        Ok(())
    }

    async fn message_status(
        &self,
        client_id: &str,
        seq: u64,
        nonce: u32,
        now_ms: u64,
    ) -> Result<Option<MessageStatus>, StoreError> {
        Ok(self
            .queues
            .get_mut(client_id)
            .and_then(|mut q| q.status(client_id, seq, nonce, now_ms)))
    }

    async fn queue_info(&self, client_id: &str, now_ms: u64) -> Result<QueueInfo, StoreError> {
        Ok(self
            .queues
            .get_mut(client_id)
            .map(|mut q| q.info(now_ms))
            .unwrap_or_default())
    }

    async fn take_expired(&self, now_ms: u64, max_clients: usize) -> Result<ExpiredScan, StoreError> {
        Ok(self.take_expired_now(now_ms, max_clients))
    }
}
