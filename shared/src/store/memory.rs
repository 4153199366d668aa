//! In-memory store for single-node mode: the same contract as Redis, held in
//! `dashmap`s. Lease expiry uses `tokio::time`, so tests can pause the clock.

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use tokio::time::Instant;

use super::{Route, Store, StoreError, USER_CLIENTS_TTL};

#[derive(Debug, Default)]
pub struct MemoryStore {
    routes: DashMap<String, (Route, Instant)>,
    users: DashMap<String, (HashSet<String>, Instant)>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn claim_route(
        &self,
        client_id: &str,
        user_id: &str,
        route: &Route,
        ttl: Duration,
    ) -> Result<Option<Route>, StoreError> {
        let now = Instant::now();
        let previous = self
            .routes
            .insert(client_id.to_owned(), (route.clone(), now + ttl))
            .filter(|(_, expires)| *expires > now)
            .map(|(r, _)| r);
        let mut user = self
            .users
            .entry(user_id.to_owned())
            .or_insert_with(|| (HashSet::new(), now));
        if user.1 <= now {
            user.0.clear();
        }
        user.0.insert(client_id.to_owned());
        user.1 = now + USER_CLIENTS_TTL;
        Ok(previous)
    }

    async fn get_route(&self, client_id: &str) -> Result<Option<Route>, StoreError> {
        let now = Instant::now();
        Ok(self
            .routes
            .get(client_id)
            .filter(|e| e.1 > now)
            .map(|e| e.0.clone()))
    }

    async fn release_route(&self, client_id: &str, route: &Route) -> Result<bool, StoreError> {
        Ok(self
            .routes
            .remove_if(client_id, |_, (current, _)| current == route)
            .is_some())
    }

    async fn refresh_routes(&self, routes: &[(String, Route)], ttl: Duration) -> Result<usize, StoreError> {
        let now = Instant::now();
        let mut renewed = 0;
        for (client_id, route) in routes {
            if let Some(mut entry) = self.routes.get_mut(client_id) {
                if entry.0 == *route && entry.1 > now {
                    entry.1 = now + ttl;
                    renewed += 1;
                }
            }
        }
        // Expired leases are dropped here too, so the map does not keep dead clients.
        self.routes.retain(|_, (_, expires)| *expires > now);
        Ok(renewed)
    }

    async fn user_clients(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let now = Instant::now();
        Ok(self
            .users
            .get(user_id)
            .filter(|e| e.1 > now)
            .map(|e| e.0.iter().cloned().collect())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
