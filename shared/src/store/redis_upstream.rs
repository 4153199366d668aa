//! `UpstreamState` on Redis. Frame claims live beside the client's queue
//! (`P{c:<client>}:f:<key>`), each service's spool is a stream
//! (`P{s:<service>}:spool`), leases are plain keys, isolated endpoints one hash.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{AsyncCommands, Script, Value};

use super::upstream_state::{FrameClaim, SpoolItem, UpstreamState};
use super::{RedisStore, StoreError};

static SPOOL_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('XADD', KEYS[1], '*', 'd', ARGV[1])
return 1",
    )
});

static LEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0",
    )
});

fn unavailable(e: redis::RedisError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

impl RedisStore {
    fn frame_key(&self, client_id: &str, key: &str) -> String {
        format!("{}f:{key}", self.keys().client(client_id))
    }

    fn spool_key(&self, service: &str) -> String {
        format!("{}{{s:{service}}}:spool", self.keys().prefix())
    }

    fn isolated_key(&self) -> String {
        format!("{}admin:isolated", self.keys().prefix())
    }
}

#[async_trait]
impl UpstreamState for RedisStore {
    async fn begin_frame(&self, client_id: &str, key: &str, ttl_ms: u64) -> Result<FrameClaim, StoreError> {
        // SET NX and GET in one round trip, without a script: cheaper for Redis
        // than Lua on the per-request path. Not atomic as a pair, which only
        // matters if the claim expires between the two: reported as in flight.
        let k = self.frame_key(client_id, key);
        let (claimed, current): (Option<String>, Option<String>) = redis::pipe()
            .cmd("SET")
            .arg(&k)
            .arg("")
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1))
            .cmd("GET")
            .arg(&k)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(match (claimed, current) {
            (Some(_), _) => FrameClaim::New,
            (None, Some(outcome)) if !outcome.is_empty() => FrameClaim::Done(outcome),
            (None, _) => FrameClaim::InFlight,
        })
    }

    async fn finish_frame(&self, client_id: &str, key: &str, outcome: &str, ttl_ms: u64) -> Result<(), StoreError> {
        self.conn()
            .pset_ex::<_, _, ()>(self.frame_key(client_id, key), outcome, ttl_ms.max(1))
            .await
            .map_err(unavailable)
    }

    async fn forget_frame(&self, client_id: &str, key: &str) -> Result<(), StoreError> {
        self.conn()
            .del::<_, ()>(self.frame_key(client_id, key))
            .await
            .map_err(unavailable)
    }

    async fn spool_push(&self, service: &str, data: &[u8], max_items: u64) -> Result<bool, StoreError> {
        let stored: u8 = SPOOL_PUSH
            .key(self.spool_key(service))
            .arg(data)
            .arg(max_items)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(stored == 1)
    }

    async fn spool_peek(&self, service: &str, max: usize) -> Result<Vec<SpoolItem>, StoreError> {
        let reply: Value = redis::cmd("XRANGE")
            .arg(self.spool_key(service))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(max)
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        let corrupt = || StoreError::Corrupt("spool entry".into());
        let Value::Array(entries) = reply else {
            return Err(corrupt());
        };
        let mut items = Vec::with_capacity(entries.len());
        for entry in entries {
            // [id, [field, value]]
            let Value::Array(parts) = entry else {
                return Err(corrupt());
            };
            let (Some(id), Some(Value::Array(fields))) = (parts.first(), parts.get(1)) else {
                return Err(corrupt());
            };
            let id: String = redis::from_redis_value(id).map_err(|_| corrupt())?;
            let data: Vec<u8> = match fields.get(1) {
                Some(v) => redis::from_redis_value(v).map_err(|_| corrupt())?,
                None => return Err(corrupt()),
            };
            items.push(SpoolItem { id, data });
        }
        Ok(items)
    }

    async fn spool_remove(&self, service: &str, id: &str) -> Result<(), StoreError> {
        redis::cmd("XDEL")
            .arg(self.spool_key(service))
            .arg(id)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn spool_len(&self, service: &str) -> Result<u64, StoreError> {
        redis::cmd("XLEN")
            .arg(self.spool_key(service))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)
    }

    async fn try_lease(&self, name: &str, holder: &str, ttl_ms: u64) -> Result<bool, StoreError> {
        let got: u8 = LEASE
            .key(format!("{}lease:{name}", self.keys().prefix()))
            .arg(holder)
            .arg(ttl_ms.max(1))
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(got == 1)
    }

    async fn set_isolated(&self, key: &str, isolated: bool) -> Result<(), StoreError> {
        let mut conn = self.conn();
        if isolated {
            conn.hset::<_, _, _, ()>(self.isolated_key(), key, super::now_ms())
                .await
                .map_err(unavailable)
        } else {
            conn.hdel::<_, _, ()>(self.isolated_key(), key)
                .await
                .map_err(unavailable)
        }
    }

    async fn isolated(&self) -> Result<Vec<String>, StoreError> {
        self.conn().hkeys(self.isolated_key()).await.map_err(unavailable)
    }

    async fn set_routing_table(&self, json: &str) -> Result<(), StoreError> {
        self.conn()
            .set::<_, _, ()>(format!("{}admin:routing", self.keys().prefix()), json)
            .await
            .map_err(unavailable)
    }

    async fn routing_table(&self) -> Result<Option<String>, StoreError> {
        self.conn()
            .get(format!("{}admin:routing", self.keys().prefix()))
            .await
            .map_err(unavailable)
    }
}
