//! The push fallback's schedule in memory: the rules of `fallback_take.lua`.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;

use super::MemoryStore;
use crate::fallbacks::{DueFallback, DueFallbacks, FallbackSchedule, Scheduled};
use crate::StoreError;

struct Entry {
    /// When it is (next) due: its schedule, or the end of its lease.
    at: u64,
    expires_ms: u64,
    spec: Vec<u8>,
}

/// Waiting fallbacks in due order.
#[derive(Default)]
pub(crate) struct MemoryFallbacks {
    order: BTreeSet<(u64, String, u64)>,
    entries: HashMap<(String, u64), Entry>,
}

impl std::fmt::Debug for MemoryFallbacks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemoryFallbacks({} waiting)", self.entries.len())
    }
}

impl MemoryStore {
    fn fallbacks(&self) -> std::sync::MutexGuard<'_, MemoryFallbacks> {
        self.fallbacks.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl FallbackSchedule for MemoryStore {
    async fn schedule_fallback(
        &self,
        client_id: &str,
        seq: u64,
        due_ms: u64,
        expires_ms: u64,
        spec: &[u8],
        max_waiting: usize,
    ) -> Result<Scheduled, StoreError> {
        let mut f = self.fallbacks();
        let key = (client_id.to_owned(), seq);
        if f.entries.contains_key(&key) {
            return Ok(Scheduled::Waiting);
        }
        if f.entries.len() >= max_waiting {
            return Ok(Scheduled::Full);
        }
        f.order.insert((due_ms, key.0.clone(), seq));
        f.entries.insert(
            key,
            Entry {
                at: due_ms,
                expires_ms,
                spec: spec.to_vec(),
            },
        );
        Ok(Scheduled::Waiting)
    }

    async fn take_due_fallbacks(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Result<DueFallbacks, StoreError> {
        let mut f = self.fallbacks();
        let due: Vec<(u64, String, u64)> = f
            .order
            .iter()
            .take_while(|(at, _, _)| *at <= now_ms)
            .take(limit)
            .cloned()
            .collect();
        let mut out = DueFallbacks {
            more: due.len() >= limit,
            ..DueFallbacks::default()
        };
        for (at, client_id, seq) in due {
            f.order.remove(&(at, client_id.clone(), seq));
            let key = (client_id, seq);
            let Some(entry) = f.entries.get_mut(&key) else { continue };
            if entry.expires_ms <= now_ms {
                f.entries.remove(&key);
                out.expired += 1;
                continue;
            }
            entry.at = now_ms + lease_ms;
            let (expires_ms, spec) = (entry.expires_ms, entry.spec.clone());
            f.order.insert((now_ms + lease_ms, key.0.clone(), seq));
            out.due.push(DueFallback {
                client_id: key.0,
                seq,
                expires_ms,
                spec,
            });
        }
        Ok(out)
    }

    async fn finish_fallback(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        let mut f = self.fallbacks();
        if let Some(entry) = f.entries.remove(&(client_id.to_owned(), seq)) {
            f.order.remove(&(entry.at, client_id.to_owned(), seq));
        }
        Ok(())
    }
}
