//! The push fallback's schedule on Redis: [`FALLBACK_SHARDS`] shards, each a
//! sorted set (entry `<seq>|<client_id>` -> when due) and a hash (entry ->
//! `<expires_ms>\n<spec>`) in its own slot, so a Cluster spreads them.
//! Scheduling and taking are scripts (`fallback_schedule.lua`,
//! `fallback_take.lua`): a take leases what it hands out in the same step,
//! so each due fallback goes to one taker.

use std::sync::LazyLock;

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::{Script, Value};

use super::{array, int, unavailable, RedisStore};
use crate::fallbacks::{DueFallback, DueFallbacks, FallbackSchedule, Scheduled};
use crate::StoreError;

/// Shards of the schedule.
pub const FALLBACK_SHARDS: usize = 8;

static SCHEDULE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../scripts/fallback_schedule.lua")));
static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../../scripts/fallback_take.lua")));
static FINISH: LazyLock<Script> =
    LazyLock::new(|| Script::new("redis.call('ZREM', KEYS[1], ARGV[1]) redis.call('HDEL', KEYS[2], ARGV[1]) return 1"));

fn entry(client_id: &str, seq: u64) -> String {
    [itoa::Buffer::new().format(seq), "|", client_id].concat()
}

fn shard_keys(store: &RedisStore, client_id: &str) -> [String; 2] {
    store
        .keys
        .fallbacks(super::expiry::shard_of(client_id, FALLBACK_SHARDS))
}

fn bytes(v: &Value) -> Result<&[u8], StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        other => Err(StoreError::Corrupt(format!("fallback entry {other:?}"))),
    }
}

fn parse_due(entry: &[u8], value: &[u8]) -> Result<DueFallback, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("fallback entry {}", String::from_utf8_lossy(entry)));
    let entry = std::str::from_utf8(entry).map_err(|_| corrupt())?;
    let (seq, client_id) = entry.split_once('|').ok_or_else(corrupt)?;
    let newline = value.iter().position(|&b| b == b'\n').ok_or_else(corrupt)?;
    let expires_ms = std::str::from_utf8(&value[..newline])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(corrupt)?;
    Ok(DueFallback {
        client_id: client_id.to_owned(),
        seq: seq.parse().map_err(|_| corrupt())?,
        expires_ms,
        spec: value[newline + 1..].to_vec(),
    })
}

#[async_trait]
impl FallbackSchedule for RedisStore {
    async fn schedule_fallback(
        &self,
        client_id: &str,
        seq: u64,
        due_ms: u64,
        expires_ms: u64,
        spec: &[u8],
        max_waiting: usize,
    ) -> Result<Scheduled, StoreError> {
        let mut value = itoa::Buffer::new().format(expires_ms).as_bytes().to_vec();
        value.push(b'\n');
        value.extend_from_slice(spec);
        let mut call = SCHEDULE.prepare_invoke();
        for key in shard_keys(self, client_id) {
            call.key(key);
        }
        call.arg(entry(client_id, seq))
            .arg(due_ms)
            .arg(value)
            .arg(max_waiting.div_ceil(FALLBACK_SHARDS).max(1));
        let kept: Value = call.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(if int(&kept)? == 1 {
            Scheduled::Waiting
        } else {
            Scheduled::Full
        })
    }

    async fn take_due_fallbacks(&self, now_ms: u64, lease_ms: u64, limit: usize) -> Result<DueFallbacks, StoreError> {
        let per_shard = limit.div_ceil(FALLBACK_SHARDS).max(1);
        let takes = (0..FALLBACK_SHARDS).map(|n| {
            let mut call = TAKE.prepare_invoke();
            for key in self.keys.fallbacks(n) {
                call.key(key);
            }
            call.arg(now_ms).arg(lease_ms).arg(per_shard);
            let mut conn = self.conn.clone();
            async move { call.invoke_async::<Value>(&mut conn).await }
        });
        let mut out = DueFallbacks::default();
        for reply in join_all(takes).await {
            let items = array(reply.map_err(unavailable)?)?;
            let [expired, more, taken @ ..] = items.as_slice() else {
                return Err(StoreError::Corrupt(format!("fallback take reply {items:?}")));
            };
            out.expired += int(expired)?;
            out.more |= int(more)? == 1;
            for pair in taken.chunks(2) {
                let [entry, value] = pair else {
                    return Err(StoreError::Corrupt("fallback take reply: odd".into()));
                };
                out.due.push(parse_due(bytes(entry)?, bytes(value)?)?);
            }
        }
        Ok(out)
    }

    async fn finish_fallback(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        let mut call = FINISH.prepare_invoke();
        for key in shard_keys(self, client_id) {
            call.key(key);
        }
        call.arg(entry(client_id, seq));
        let _: Value = call.invoke_async(&mut self.conn.clone()).await.map_err(unavailable)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_read_back_whatever_the_client_id_holds() {
        let due = parse_due(entry("a|b c", 42).as_bytes(), b"1800000000000\n{\"x\":\"\\n\"}\n").expect("parses");
        assert_eq!(due.client_id, "a|b c");
        assert_eq!(due.seq, 42);
        assert_eq!(due.expires_ms, 1_800_000_000_000);
        assert_eq!(due.spec, b"{\"x\":\"\\n\"}\n");
        assert!(parse_due(b"nope", b"1\n").is_err());
        assert!(parse_due(b"1|c", b"no newline").is_err());
    }
}
