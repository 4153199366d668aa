//! `UpstreamState` of the in-memory store. Expiry uses `tokio::time`, so tests
//! can pause the clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::upstream_state::{FrameClaim, SpoolItem, SpoolLimits, SpoolPush, SpoolUsage, UpstreamState};
use crate::{MemoryStore, StoreError};

/// Upstream tier state of one `MemoryStore`.
#[derive(Debug, Default)]
pub(crate) struct MemoryUpstream {
    /// (client, key) -> (outcome, `None` while in flight; expiry).
    frames: dashmap::DashMap<(String, String), (Option<String>, Instant)>,
    spools: dashmap::DashMap<String, Spool>,
    leases: dashmap::DashMap<String, (String, Instant)>,
    isolated: std::sync::Mutex<BTreeSet<String>>,
    finished: std::sync::atomic::AtomicU64,
    routing: std::sync::Mutex<Option<String>>,
}

/// One service's spool and what each owner holds in it.
#[derive(Debug, Default)]
struct Spool {
    next_id: u64,
    /// id -> (owner, data), in spool order.
    items: BTreeMap<u64, (String, Vec<u8>)>,
    bytes: u64,
    /// owner -> (items, bytes); owners holding nothing are removed.
    owners: HashMap<String, (u64, u64)>,
}

/// Finished frames between two sweeps of expired claims.
const SWEEP_EVERY: u64 = 4096;

fn after(ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(ms)
}

#[async_trait]
impl UpstreamState for MemoryStore {
    async fn begin_frame(&self, client_id: &str, key: &str, ttl_ms: u64) -> Result<FrameClaim, StoreError> {
        let mut e = self
            .upstream
            .frames
            .entry((client_id.to_owned(), key.to_owned()))
            .or_insert((None, Instant::now()));
        if e.1 > Instant::now() {
            return Ok(match &e.0 {
                Some(outcome) => FrameClaim::Done(outcome.clone()),
                None => FrameClaim::InFlight,
            });
        }
        *e = (None, after(ttl_ms));
        Ok(FrameClaim::New)
    }

    async fn finish_frame(&self, client_id: &str, key: &str, outcome: &str, ttl_ms: u64) -> Result<(), StoreError> {
        self.upstream.frames.insert(
            (client_id.to_owned(), key.to_owned()),
            (Some(outcome.to_owned()), after(ttl_ms)),
        );
        let finished = self
            .upstream
            .finished
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if finished % SWEEP_EVERY == SWEEP_EVERY - 1 {
            let now = Instant::now();
            self.upstream.frames.retain(|_, v| v.1 > now);
        }
        Ok(())
    }

    async fn forget_frame(&self, client_id: &str, key: &str) -> Result<(), StoreError> {
        self.upstream.frames.remove(&(client_id.to_owned(), key.to_owned()));
        Ok(())
    }

    async fn spool_push(
        &self,
        service: &str,
        owner: &str,
        data: &[u8],
        limits: &SpoolLimits,
    ) -> Result<SpoolPush, StoreError> {
        let mut spool = self.upstream.spools.entry(service.to_owned()).or_default();
        let len = data.len() as u64;
        if spool.items.len() as u64 >= limits.max_items || spool.bytes + len > limits.max_bytes {
            return Ok(SpoolPush::ServiceFull);
        }
        let (items, bytes) = spool.owners.get(owner).copied().unwrap_or_default();
        if items >= limits.max_owner_items || bytes + len > limits.max_owner_bytes {
            return Ok(SpoolPush::OwnerFull);
        }
        spool.next_id += 1;
        let id = spool.next_id;
        spool.items.insert(id, (owner.to_owned(), data.to_vec()));
        spool.bytes += len;
        spool.owners.insert(owner.to_owned(), (items + 1, bytes + len));
        Ok(SpoolPush::Stored)
    }

    async fn spool_peek(&self, service: &str, max: usize) -> Result<Vec<SpoolItem>, StoreError> {
        Ok(self
            .upstream
            .spools
            .get(service)
            .map(|s| {
                s.items
                    .iter()
                    .take(max)
                    .map(|(id, (_, data))| SpoolItem {
                        id: id.to_string(),
                        data: data.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn spool_remove(&self, service: &str, id: &str) -> Result<(), StoreError> {
        let (Some(mut spool), Ok(id)) = (self.upstream.spools.get_mut(service), id.parse::<u64>()) else {
            return Ok(());
        };
        let Some((owner, data)) = spool.items.remove(&id) else {
            return Ok(());
        };
        let len = data.len() as u64;
        spool.bytes -= len;
        if let Some(held) = spool.owners.get_mut(&owner) {
            *held = (held.0 - 1, held.1 - len);
            if held.0 == 0 {
                spool.owners.remove(&owner);
            }
        }
        Ok(())
    }

    async fn spool_len(&self, service: &str) -> Result<u64, StoreError> {
        Ok(self.upstream.spools.get(service).map_or(0, |s| s.items.len() as u64))
    }

    async fn spool_usage(&self, service: &str, owner: &str) -> Result<SpoolUsage, StoreError> {
        Ok(self.upstream.spools.get(service).map_or_else(SpoolUsage::default, |s| {
            let (owner_items, owner_bytes) = s.owners.get(owner).copied().unwrap_or_default();
            SpoolUsage {
                bytes: s.bytes,
                owner_items,
                owner_bytes,
            }
        }))
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let mut lease = self
            .upstream
            .leases
            .entry(name.to_owned())
            .or_insert_with(|| (holder.to_owned(), Instant::now()));
        if lease.0 == holder || lease.1 <= Instant::now() {
            *lease = (holder.to_owned(), after(ttl_ms));
            return Ok(true);
        }
        Ok(false)
    }

    async fn set_isolated(&self, key: &str, isolated: bool) -> Result<(), StoreError> {
        let mut set = self
            .upstream
            .isolated
            .lock()
            .map_err(|_| StoreError::Unavailable("isolation set poisoned".into()))?;
        if isolated {
            set.insert(key.to_owned());
        } else {
            set.remove(key);
        }
        Ok(())
    }

    async fn isolated(&self) -> Result<Vec<String>, StoreError> {
        let set = self
            .upstream
            .isolated
            .lock()
            .map_err(|_| StoreError::Unavailable("isolation set poisoned".into()))?;
        Ok(set.iter().cloned().collect())
    }

    async fn set_routing_table(&self, json: &str) -> Result<(), StoreError> {
        *self
            .upstream
            .routing
            .lock()
            .map_err(|_| StoreError::Unavailable("routing poisoned".into()))? = Some(json.to_owned());
        Ok(())
    }

    async fn routing_table(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .upstream
            .routing
            .lock()
            .map_err(|_| StoreError::Unavailable("routing poisoned".into()))?
            .clone())
    }
}
