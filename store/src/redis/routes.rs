//! Route leases and client ownership on Redis.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands;

use super::queue::queue_key;
use super::{millis, unavailable, RedisStore};
use crate::{Claim, ClaimError, LeaseCheck, Renewal, Route, Routes, StoreError, USER_CLIENTS_TTL};

/// Deletes KEYS[1] only while it still holds ARGV[1].
const RELEASE_IF_OWNED: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Renews KEYS[1] (a route) for ARGV[2] ms while it holds ARGV[1]; writes it
/// back if it vanished; {1 renewed | 2 restored | 0 owned by another
/// connection, the client's last seq from its counters KEYS[2] (same slot)}.
/// A renewed connection keeps its owner KEYS[3] alive too (for ARGV[3] ms,
/// renewed once half of it is gone), so a connection older than the owner's
/// life cannot be taken over by another user.
const RENEW_IF_OWNED: &str = r"
local v = redis.call('GET', KEYS[1])
local m = redis.call('HGET', KEYS[2], 'm')
local seq = m and struct.unpack('<d', m) or 0
if v and v ~= ARGV[1] then return {0, seq} end
if v then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
local left = redis.call('PTTL', KEYS[3])
if left >= 0 and left * 2 < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
if v then return {1, seq} end
return {2, seq}";

/// KEYS[1] route, KEYS[2] epoch counter, KEYS[3] owner, KEYS[4] queue hash
/// (one slot). Unless the client id belongs to another user than ARGV[4]
/// (then `{0}`, nothing changed), takes the next epoch, writes the route
/// `ARGV[1]|epoch` for ARGV[2] ms and keeps the owner for ARGV[3] ms, or as
/// long as the queue lives if that is longer (the enqueue script extends it
/// with the queue); raises the queue's seq counter to ARGV[5] (the
/// connect's `last_seq`) before the route is visible; returns {epoch, previous}.
const CLAIM: &str = r"
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[4] then return {0, false} end
local last = tonumber(ARGV[5])
if last > 0 then
  -- The seq is the first double of the packed counters (COUNTERS in
  -- redis_scripts.rs); a queue without counters gets them as the scripts'
  -- `counters()` defaults, with that seq.
  local m = redis.call('HGET', KEYS[4], 'm')
  if not m then
    redis.call('HSET', KEYS[4], 'm', struct.pack('<dddddddddd', last, 0, 0, 0, 0, 0, 9007199254740991, 0, -1, 0))
    if redis.call('PTTL', KEYS[4]) == -1 then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
  elseif struct.unpack('<d', m) < last then
    redis.call('HSET', KEYS[4], 'm', struct.pack('<d', last) .. string.sub(m, 9))
  end
end
local e = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local life = math.max(tonumber(ARGV[3]), redis.call('PTTL', KEYS[4]))
redis.call('SET', KEYS[3], ARGV[4], 'PX', life)
local prev = redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2], 'GET')
return {e, prev}";

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
            .arg(CLAIM)
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
        let (epoch, previous): (u64, Option<String>) = answer
            .first()
            .map(redis::from_redis_value)
            .transpose()
            .map_err(|e| StoreError::Corrupt(e.to_string()))?
            .ok_or_else(|| StoreError::Corrupt("no answer to the route claim".into()))?;
        if epoch == 0 {
            return Err(ClaimError::Taken);
        }
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
            .arg(RELEASE_IF_OWNED)
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
                    cmd.arg(RENEW_IF_OWNED)
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
                let (code, last_seq): (i64, u64) = redis::from_redis_value(answer).map_err(unavailable)?;
                let renewal = match code {
                    1 => Renewal::Renewed,
                    2 => Renewal::Restored,
                    _ => Renewal::Replaced,
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
