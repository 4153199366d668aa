//! `UpstreamState` on Redis. Frame claims live beside the client's queue
//! (`P{c:<client>}:f:<key>`), each service's spool is a stream
//! (`P{s:<service>}:spool`), leases are plain keys, isolated endpoints one hash.

use std::sync::LazyLock;

use async_trait::async_trait;
use redis::{AsyncCommands, Script, Value};

use crate::upstream_state::{FrameClaim, SpoolItem, SpoolLimits, SpoolPush, SpoolUsage, UpstreamState};
use crate::{RedisStore, StoreError};

/// KEYS: the spool stream, its usage hash (`bytes`, and `n:<owner>` items and
/// `b:<owner>` bytes per owner). ARGV: data, owner, max_items, max_bytes,
/// max_owner_items, max_owner_bytes.
static SPOOL_PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local len = string.len(ARGV[1])
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[3])
  or tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0') + len > tonumber(ARGV[4]) then
  return 'service_full'
end
local n = tonumber(redis.call('HGET', KEYS[2], 'n:' .. ARGV[2]) or '0')
local b = tonumber(redis.call('HGET', KEYS[2], 'b:' .. ARGV[2]) or '0')
if n >= tonumber(ARGV[5]) or b + len > tonumber(ARGV[6]) then return 'owner_full' end
redis.call('XADD', KEYS[1], '*', 'd', ARGV[1], 'o', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'bytes', len)
redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'b:' .. ARGV[2], len)
return 'stored'",
    )
});

/// KEYS: the spool stream, its usage hash. ARGV: the entry id. Entries
/// spooled before owners were counted carry no `o` field and free nothing.
static SPOOL_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local entry = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #entry == 0 then return 0 end
local fields = entry[1][2]
local data, owner = '', nil
for i = 1, #fields, 2 do
  if fields[i] == 'd' then data = fields[i + 1] elseif fields[i] == 'o' then owner = fields[i + 1] end
end
redis.call('XDEL', KEYS[1], ARGV[1])
if owner then
  local len = string.len(data)
  for field, by in pairs({['bytes'] = len, ['n:' .. owner] = 1, ['b:' .. owner] = len}) do
    -- 0 - by, not -by: Lua writes -0 for an empty upload, which HINCRBY refuses.
    if redis.call('HINCRBY', KEYS[2], field, 0 - by) <= 0 then redis.call('HDEL', KEYS[2], field) end
  end
end
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

    fn spool_usage_key(&self, service: &str) -> String {
        format!("{}{{s:{service}}}:spool:use", self.keys().prefix())
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

    async fn spool_push(
        &self,
        service: &str,
        owner: &str,
        data: &[u8],
        limits: &SpoolLimits,
    ) -> Result<SpoolPush, StoreError> {
        let outcome: String = SPOOL_PUSH
            .key(self.spool_key(service))
            .key(self.spool_usage_key(service))
            .arg(data)
            .arg(owner)
            .arg(limits.max_items)
            .arg(limits.max_bytes)
            .arg(limits.max_owner_items)
            .arg(limits.max_owner_bytes)
            .invoke_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        match outcome.as_str() {
            "stored" => Ok(SpoolPush::Stored),
            "service_full" => Ok(SpoolPush::ServiceFull),
            "owner_full" => Ok(SpoolPush::OwnerFull),
            other => Err(StoreError::Corrupt(format!("spool push answered {other:?}"))),
        }
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
        SPOOL_REMOVE
            .key(self.spool_key(service))
            .key(self.spool_usage_key(service))
            .arg(id)
            .invoke_async::<()>(&mut self.conn())
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

    async fn spool_usage(&self, service: &str, owner: &str) -> Result<SpoolUsage, StoreError> {
        let (bytes, owner_items, owner_bytes): (Option<u64>, Option<u64>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.spool_usage_key(service))
            .arg("bytes")
            .arg(format!("n:{owner}"))
            .arg(format!("b:{owner}"))
            .query_async(&mut self.conn())
            .await
            .map_err(unavailable)?;
        Ok(SpoolUsage {
            bytes: bytes.unwrap_or(0),
            owner_items: owner_items.unwrap_or(0),
            owner_bytes: owner_bytes.unwrap_or(0),
        })
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
            conn.hset::<_, _, _, ()>(self.isolated_key(), key, crate::now_ms())
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
