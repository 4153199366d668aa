//! The operator's queue overview: which clients have the most waiting.
//! Both stores scan a bounded number of client queues (Redis with `SCAN`, so
//! it never blocks the server), so the answer is exact on small deployments
//! and a sample on large ones; `scanned` says which.

use async_trait::async_trait;

use crate::redis::scripts::unpack_counters;
use crate::{now_ms, MemoryStore, RedisStore, StoreError};

/// One client's backlog.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Backlog {
    pub client_id: String,
    pub pending: u64,
    pub pending_bytes: u64,
}

/// The largest backlogs among the queues looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Overview {
    pub top_pending: Vec<Backlog>,
    /// Client queues looked at.
    pub scanned: u64,
    /// Whether every queue was looked at (else `scan_max` was reached).
    pub complete: bool,
    /// Pending messages and bytes over the queues looked at.
    pub pending: u64,
    pub pending_bytes: u64,
}

#[async_trait]
pub trait QueueOverview: Send + Sync + 'static {
    /// The `limit` clients with the most pending messages among at most `scan_max` queues.
    async fn overview(&self, limit: usize, scan_max: usize) -> Result<Overview, StoreError>;
}

fn finish(mut all: Vec<Backlog>, limit: usize, complete: bool) -> Overview {
    let scanned = all.len() as u64;
    let pending = all.iter().map(|b| b.pending).sum();
    let pending_bytes = all.iter().map(|b| b.pending_bytes).sum();
    all.sort_by(|a, b| b.pending.cmp(&a.pending).then_with(|| a.client_id.cmp(&b.client_id)));
    all.retain(|b| b.pending > 0);
    all.truncate(limit);
    Overview {
        top_pending: all,
        scanned,
        complete,
        pending,
        pending_bytes,
    }
}

#[async_trait]
impl QueueOverview for MemoryStore {
    async fn overview(&self, limit: usize, scan_max: usize) -> Result<Overview, StoreError> {
        let now = now_ms();
        let mut all = Vec::new();
        let mut complete = true;
        for mut q in self.queues.iter_mut() {
            if all.len() >= scan_max {
                complete = false;
                break;
            }
            let info = q.info(now);
            all.push(Backlog {
                client_id: q.key().clone(),
                pending: info.pending,
                pending_bytes: info.pending_bytes,
            });
        }
        Ok(finish(all, limit, complete))
    }
}

#[async_trait]
impl QueueOverview for RedisStore {
    async fn overview(&self, limit: usize, scan_max: usize) -> Result<Overview, StoreError> {
        let unavailable = |e: redis::RedisError| StoreError::Unavailable(e.to_string());
        let prefix = self.keys().prefix().to_owned();
        let pattern = format!("{prefix}{{c:*}}:h");
        let conn = self.conn();
        let (mut counters, scanned_all) = conn.scan(&pattern, scan_max + 1).await.map_err(unavailable)?;
        let complete = scanned_all && counters.len() <= scan_max;
        counters.truncate(scan_max);
        let mut all = Vec::with_capacity(counters.len());
        for chunk in counters.chunks(256) {
            let mut cmds = Vec::with_capacity(chunk.len());
            for meta in chunk {
                let mut counts = redis::cmd("HGET");
                counts.arg(meta).arg("m");
                cmds.push(counts);
            }
            let values = conn.run_all(cmds).await.map_err(unavailable)?;
            let answers = values.iter().map(|v| {
                let packed: Option<Vec<u8>> = redis::from_redis_value(v).unwrap_or(None);
                match packed.as_deref().and_then(unpack_counters) {
                    Some(c) => (c.pending as u64, c.bytes as u64),
                    None => (0, 0),
                }
            });
            for (meta, (pending, bytes)) in chunk.iter().zip(answers) {
                let client_id = meta
                    .strip_prefix(&format!("{prefix}{{c:"))
                    .and_then(|rest| rest.strip_suffix("}:h"))
                    .unwrap_or(meta)
                    .to_owned();
                all.push(Backlog {
                    client_id,
                    pending,
                    pending_bytes: bytes,
                });
            }
        }
        Ok(finish(all, limit, complete))
    }
}
