//! Expiry reports of the in-memory store: the rules of `expire_due.lua`.
//! Clients whose expiries are reported sit in one index ordered by their
//! earliest expiry (0 while expiries wait to be reported), so a scan costs
//! what is due, not a walk of every queue.

use super::queue::ClientQueue;
use super::MemoryStore;
use crate::{message_id, ExpiredMessage, ExpiredScan};

impl MemoryStore {
    /// Puts the client's index entry where its queue says (or removes it).
    /// Called with the queue's entry locked, so entries and queues agree.
    pub(super) fn reindex(&self, client_id: &str, queue: &mut ClientQueue) {
        let next = queue.next_expiry();
        if next == queue.indexed_at {
            return;
        }
        let mut index = self.expiry_index.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = queue.indexed_at.take() {
            index.remove(&(old, client_id.to_owned()));
        }
        if let Some(at) = next {
            index.insert((at, client_id.to_owned()));
        }
        queue.indexed_at = next;
    }

    pub(super) fn take_expired_now(&self, now_ms: u64, max_clients: usize) -> ExpiredScan {
        // Collected first: a queue is never locked while the index is.
        let due: Vec<(u64, String)> = {
            let index = self.expiry_index.lock().unwrap_or_else(|e| e.into_inner());
            index
                .iter()
                .take_while(|(at, _)| *at <= now_ms)
                .take(max_clients)
                .cloned()
                .collect()
        };
        let mut scan = ExpiredScan {
            more: due.len() >= max_clients,
            ..Default::default()
        };
        for (at, client_id) in due {
            let taken = match self.queues.get_mut(&client_id) {
                Some(mut queue) => {
                    queue.tidy(now_ms);
                    let taken = std::mem::take(&mut queue.unreported);
                    scan.lost += std::mem::take(&mut queue.lost);
                    self.reindex(&client_id, &mut queue);
                    taken
                }
                None => {
                    // The queue was forgotten (nothing left in it): so is its entry.
                    let mut index = self.expiry_index.lock().unwrap_or_else(|e| e.into_inner());
                    index.remove(&(at, client_id));
                    continue;
                }
            };
            if taken.is_empty() {
                continue;
            }
            let user_id = self.identities.get(client_id.as_str()).map(|i| i.owner.clone());
            scan.messages.extend(
                taken
                    .into_iter()
                    .map(|(seq, nonce, created_ms, expires_ms)| ExpiredMessage {
                        client_id: client_id.clone(),
                        user_id: user_id.clone(),
                        seq,
                        msg_id: message_id(&client_id, seq, nonce),
                        created_ms,
                        expires_ms,
                    }),
            );
        }
        scan
    }
}
