//! The in-memory store forgets clients the way Redis keys expire: a client
//! with no live route, no stored state (messages, statuses, idempotency keys
//! all past their retention) and an owner past [`crate::USER_CLIENTS_TTL`]
//! since its last connect leaves nothing behind. Without this every client id
//! ever connected or pushed to would stay in memory for the life of the
//! process.
//!
//! The sweep runs inline from `claim_route` and `enqueue` (the calls that
//! create entries) at most once per [`SWEEP_INTERVAL`], so memory cannot grow
//! without a sweep coming due, and a quiet node does no work. It walks every
//! entry: about 0.1 s per million idle clients, once a minute at most.
//!
//! Locks: elsewhere an identity entry is held while routes and queues are
//! read or written, never the other way round; the sweep keeps that order and
//! only ever holds one entry of each map.

use std::time::Duration;

use tokio::time::Instant;

use super::MemoryStore;

/// The least time between two sweeps.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How many entries the store holds, for tests and operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryHeld {
    /// Client ids with an owner and a connection counter.
    pub clients: usize,
    pub queues: usize,
    pub routes: usize,
    /// Users with a list of their clients.
    pub users: usize,
}

impl MemoryStore {
    pub fn held(&self) -> MemoryHeld {
        MemoryHeld {
            clients: self.identities.len(),
            queues: self.queues.len(),
            routes: self.routes.len(),
            users: self.users.len(),
        }
    }

    /// Sweeps if the last sweep was [`SWEEP_INTERVAL`] ago; a sweep already
    /// running elsewhere makes this a no-op.
    pub(super) fn sweep_if_due(&self, now_ms: u64) {
        let now = Instant::now();
        {
            let Ok(mut last) = self.last_sweep.try_lock() else {
                return;
            };
            match *last {
                Some(at) if now.duration_since(at) < SWEEP_INTERVAL => return,
                None => {
                    // The first call only starts the interval.
                    *last = Some(now);
                    return;
                }
                Some(_) => *last = Some(now),
            }
        }
        self.forget_idle_clients(now_ms);
    }

    /// Forgets every client with nothing left to keep; returns how many.
    pub fn forget_idle_clients(&self, now_ms: u64) -> usize {
        let now = Instant::now();
        self.forget_old_push_tokens(now_ms);
        self.routes.retain(|_, held| held.expires > now);
        self.users.retain(|_, (_, until)| *until > now);
        let route_lives = |client_id: &str| self.routes.get(client_id).is_some_and(|r| r.expires > now);
        // Collected first, so no shard lock is held while another map is touched.
        let owners_due: Vec<std::sync::Arc<str>> = self
            .identities
            .iter()
            .filter(|i| i.owner_until <= now)
            .map(|i| i.key().clone())
            .collect();
        let mut forgotten = 0;
        for client_id in owners_due {
            let gone = self.identities.remove_if(&*client_id, |id, identity| {
                if identity.owner_until > now || route_lives(id) {
                    return false;
                }
                let queue_kept = self.queues.get(&**id).is_some();
                let queue_gone = self
                    .queues
                    .remove_if_mut(&**id, |_, q| q.is_forgettable(now_ms))
                    .is_some();
                !queue_kept || queue_gone
            });
            forgotten += usize::from(gone.is_some());
        }
        // Queues of ids that never connected (pushed to by a backend) or whose
        // identity went above.
        let queues: Vec<String> = self.queues.iter().map(|q| q.key().clone()).collect();
        for client_id in queues {
            if self.identities.contains_key(client_id.as_str()) || route_lives(&client_id) {
                continue;
            }
            let gone = self.queues.remove_if_mut(&client_id, |_, q| q.is_forgettable(now_ms));
            forgotten += usize::from(gone.is_some());
        }
        forgotten
    }
}
