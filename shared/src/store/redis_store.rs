//! Redis store. One multiplexed connection (the `redis` connection manager)
//! pipelines concurrent commands and reconnects on its own; compare-and-set
//! steps run as Lua so they are atomic on the server.

use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError};

use super::{Claim, Keys, Renewal, Route, Store, StoreError, USER_CLIENTS_TTL};

/// Deletes KEYS[1] only while it still holds ARGV[1].
const RELEASE_IF_OWNED: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Renews KEYS[1] (a route) for ARGV[2] ms while it holds ARGV[1]; writes it
/// back if it vanished; 1 renewed, 2 restored, 0 owned by another connection.
const RENEW_IF_OWNED: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if not v then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 2 end
return 0";

/// KEYS[1] route, KEYS[2] epoch counter (same slot). Takes the next epoch and
/// writes the route `ARGV[1]|epoch` for ARGV[2] ms; returns {epoch, previous}.
const CLAIM: &str = r"
local e = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local prev = redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2], 'GET')
return {e, prev}";

/// Renewals sent per pipeline, so one refresh round never builds a huge request.
const REFRESH_BATCH: usize = 512;

#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Keys,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

fn unavailable(e: RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    /// Connects to `url`; every key starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2))
            .set_number_of_retries(2)
            .set_max_delay(1_000);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        Ok(RedisStore {
            conn,
            keys: Keys::new(prefix),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

#[async_trait]
impl Store for RedisStore {
    async fn claim_route(
        &self,
        client_id: &str,
        user_id: &str,
        node_id: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let mut conn = self.conn.clone();
        let user_key = self.keys.user_clients(user_id);
        // Route and user set live in different slots, so this is a pipeline,
        // not a transaction: the route is authoritative, the set only a hint.
        let ((epoch, previous),): ((u64, Option<String>),) = redis::pipe()
            .cmd("EVAL")
            .arg(CLAIM)
            .arg(2)
            .arg(self.keys.route(client_id))
            .arg(self.keys.epoch(client_id))
            .arg(node_id)
            .arg(millis(ttl))
            .arg(millis(USER_CLIENTS_TTL))
            .cmd("SADD")
            .arg(&user_key)
            .arg(client_id)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&user_key)
            .arg(millis(USER_CLIENTS_TTL))
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        Ok(Claim {
            route: Route {
                node_id: node_id.to_owned(),
                conn_epoch: epoch,
            },
            previous: previous.as_deref().map(Route::decode).transpose()?,
        })
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

    async fn refresh_routes(&self, routes: &[(String, Route)], ttl: Duration) -> Result<Vec<Renewal>, StoreError> {
        let mut conn = self.conn.clone();
        let mut out = Vec::with_capacity(routes.len());
        for chunk in routes.chunks(REFRESH_BATCH) {
            let mut pipe = redis::pipe();
            for (client_id, route) in chunk {
                pipe.cmd("EVAL")
                    .arg(RENEW_IF_OWNED)
                    .arg(1)
                    .arg(self.keys.route(client_id))
                    .arg(route.encode())
                    .arg(millis(ttl));
            }
            let results: Vec<i64> = pipe.query_async(&mut conn).await.map_err(unavailable)?;
            out.extend(results.into_iter().map(|r| match r {
                1 => Renewal::Renewed,
                2 => Renewal::Restored,
                _ => Renewal::Replaced,
            }));
        }
        Ok(out)
    }

    async fn user_clients(&self, user_id: &str) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        conn.smembers(self.keys.user_clients(user_id))
            .await
            .map_err(unavailable)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }
}
