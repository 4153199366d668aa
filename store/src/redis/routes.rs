//! Route leases and client ownership on Redis.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;

use super::queue::queue_key;
use super::{millis, scripts, unavailable, RedisStore};
use crate::{Claim, ClaimError, LeaseCheck, Renewal, Route, Routes, StoreError, USER_CLIENTS_TTL};

/// Renewals sent per pipeline, so one refresh round never builds a huge request.
const REFRESH_BATCH: usize = 512;

#[async_trait]
impl Routes for RedisStore {
    async fn claim_route_after(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
        last_seq: u64,
    ) -> Result<Claim, ClaimError> {
        let user_key = self.keys.user_clients(user_id);
        // Route and user set live in different slots, so these are separate
        // commands, not a transaction: the route is authoritative, the set only a hint.
        let mut claim = redis::cmd("EVAL");
        claim
            .arg(scripts::CLAIM)
            .arg(4)
            .arg(self.keys.route(client_id))
            .arg(self.keys.epoch(client_id))
            .arg(self.keys.owner(client_id))
            .arg(queue_key(&self.keys, client_id))
            .arg(node_id)
            .arg(millis(ttl))
            .arg(millis(USER_CLIENTS_TTL))
            .arg(user_id)
            .arg(last_seq.min(duplex_protocol::MAX_LAST_SEQ));
        let answer = self.conn.run_all(vec![claim]).await.map_err(unavailable)?;
        let answer = answer
            .first()
            .ok_or_else(|| StoreError::Corrupt("no answer to the route claim".into()))?;
        let (epoch, previous) = match claim_answer(answer)? {
            ClaimAnswer::Taken => return Err(ClaimError::Taken),
            ClaimAnswer::Claimed { epoch, previous } => (epoch, previous),
        };
        // The user set lives in another slot, so it is written after the
        // claim, not in one transaction: the route is authoritative, the set
        // only a hint, and a refused claim must not add to it.
        let mut add = redis::cmd("SADD");
        add.arg(&user_key).arg(client_id);
        let mut keep = redis::cmd("PEXPIRE");
        keep.arg(&user_key).arg(millis(USER_CLIENTS_TTL));
        self.conn.run_all(vec![add, keep]).await.map_err(unavailable)?;
        Ok(Claim {
            route: Route {
                node_id: node_id.to_owned(),
                conn_epoch: epoch,
            },
            previous: previous.as_deref().map(Route::decode).transpose()?,
        })
    }

    async fn client_owner(&self, client_id: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.conn.clone();
        conn.get(self.keys.owner(client_id)).await.map_err(unavailable)
    }

    async fn get_route(&self, client_id: &str) -> Result<Option<Route>, StoreError> {
        let mut conn = self.conn.clone();
        let value: Option<String> = conn.get(self.keys.route(client_id)).await.map_err(unavailable)?;
        value.as_deref().map(Route::decode).transpose()
    }

    async fn release_route(&self, client_id: &str, route: &Route) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let deleted: i64 = redis::cmd("EVAL")
            .arg(scripts::RELEASE_ROUTE)
            .arg(1)
            .arg(self.keys.route(client_id))
            .arg(route.encode())
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(deleted == 1)
    }

    async fn refresh_routes(&self, routes: &[(String, Route)], ttl: Duration) -> Result<Vec<LeaseCheck>, StoreError> {
        let mut out = Vec::with_capacity(routes.len());
        for chunk in routes.chunks(REFRESH_BATCH) {
            let renewals = chunk
                .iter()
                .map(|(client_id, route)| {
                    let mut cmd = redis::cmd("EVAL");
                    cmd.arg(scripts::RENEW_ROUTE)
                        .arg(3)
                        .arg(self.keys.route(client_id))
                        .arg(queue_key(&self.keys, client_id))
                        .arg(self.keys.owner(client_id))
                        .arg(route.encode())
                        .arg(millis(ttl))
                        .arg(millis(USER_CLIENTS_TTL));
                    cmd
                })
                .collect();
            let answers = self.conn.run_all(renewals).await.map_err(unavailable)?;
            for answer in &answers {
                let (outcome, last_seq): (String, u64) =
                    redis::from_redis_value(answer).map_err(|e| StoreError::Corrupt(format!("lease renewal: {e}")))?;
                let renewal = match outcome.as_str() {
                    "renewed" => Renewal::Renewed,
                    "restored" => Renewal::Restored,
                    "replaced" => Renewal::Replaced,
                    other => return Err(StoreError::Corrupt(format!("lease renewal answered {other:?}"))),
                };
                out.push(LeaseCheck { renewal, last_seq });
            }
        }
        Ok(out)
    }

    async fn user_clients(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        conn.smembers(self.keys.user_clients(user_id))
            .await
            .map_err(unavailable)
    }
}

/// What claim.lua answered.
enum ClaimAnswer {
    Taken,
    Claimed { epoch: u64, previous: Option<String> },
}

fn claim_answer(answer: &redis::Value) -> Result<ClaimAnswer, StoreError> {
    let corrupt = |e: String| StoreError::Corrupt(format!("route claim: {e}"));
    let items: Vec<redis::Value> = redis::from_redis_value(answer).map_err(|e| corrupt(e.to_string()))?;
    let outcome: String = match items.first() {
        Some(v) => redis::from_redis_value(v).map_err(|e| corrupt(e.to_string()))?,
        None => return Err(corrupt("empty answer".into())),
    };
    match (outcome.as_str(), items.get(1), items.get(2)) {
        ("taken", None, None) => Ok(ClaimAnswer::Taken),
        ("claimed", Some(epoch), previous) => Ok(ClaimAnswer::Claimed {
            epoch: redis::from_redis_value(epoch).map_err(|e| corrupt(e.to_string()))?,
            previous: match previous {
                Some(v) => redis::from_redis_value(v).map_err(|e| corrupt(e.to_string()))?,
                None => None,
            },
        }),
        (other, _, _) => Err(corrupt(format!("unexpected answer {other:?}"))),
    }
}
