//! Expiry reports on Redis (layout in `scripts.rs`): an index of clients
//! whose expiries are reported, sharded over [`EXPIRY_SHARDS`] sorted sets
//! because a client's queue script may only touch its own slot. A scan
//! reads the due entries of every shard with their versions, runs
//! `EXPIRE_DUE` per client (which hands each expiry to one scanner only) and
//! moves each entry with `EXPIRY_INDEX`, which leaves it alone if an enqueue
//! set it since (`EXPIRY_SET`, a new version).

use std::sync::LazyLock;

use futures_util::future::join_all;
use redis::{Script, ToRedisArgs, Value};

use super::batch::CallArgs;
use super::queue::{parse_status_base, queue_key};
use super::scripts;
use super::{array, int, unavailable, RedisStore};
use crate::{message_id, ExpiredMessage, ExpiredScan, StoreError, EXPIRED_LOG_MAX};

/// Shards of the expiry index: spreads its writes over a cluster's masters.
pub const EXPIRY_SHARDS: usize = 16;

/// Expiries taken from one client per scan step; the rest wait for the next.
const TAKE_PER_CLIENT: u64 = 1_000;

/// What groups the callers of one shard in a batch.
fn shard_name(n: usize) -> String {
    ["x:", itoa::Buffer::new().format(n)].concat()
}

/// The shard of `client_id`'s index entry.
fn shard(client_id: &str) -> usize {
    shard_of(client_id, EXPIRY_SHARDS)
}

/// Which of `shards` holds `client_id`'s entry (FNV-1a: stable across builds).
pub(super) fn shard_of(client_id: &str, shards: usize) -> usize {
    let hash = client_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % shards as u64) as usize
}

static INDEX: LazyLock<Script> = LazyLock::new(|| Script::new(scripts::EXPIRY_INDEX));

impl RedisStore {
    /// One `EXPIRY_INDEX` operation on shard `n`.
    async fn on_index(&self, n: usize, args: Vec<Vec<u8>>) -> Result<Value, StoreError> {
        let mut invocation = INDEX.prepare_invoke();
        for key in self.keys.expiry_index(n) {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg);
        }
        invocation
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(unavailable)
    }

    /// Sets the client's index entry to `at` after an enqueue lowered its
    /// earliest expiry. The message is stored whatever happens here, so a
    /// failure is logged, not returned: the caller must not store it again.
    pub(super) async fn index_expiry(&self, client_id: &str, at: u64) {
        let n = shard(client_id);
        let mut call = CallArgs::with_keys(self.keys.expiry_index(n));
        call.arg(client_id).arg(at);
        // Grouped by shard: on a cluster one call touches one slot.
        if let Err(e) = self.scripts.expiry_set.call(&shard_name(n), call).await {
            tracing::warn!(client_id, error = %e, "could not index a message's expiry; it may be reported late");
        }
    }

    pub(super) async fn take_expired_now(&self, now_ms: u64, max_clients: usize) -> Result<ExpiredScan, StoreError> {
        let per_shard = max_clients.div_ceil(EXPIRY_SHARDS).max(1);
        let reads = (0..EXPIRY_SHARDS).map(|n| self.on_index(n, args(&[&"due", &now_ms, &per_shard])));
        let mut due = Vec::new();
        let mut scan = ExpiredScan::default();
        for (n, reply) in join_all(reads).await.into_iter().enumerate() {
            let entries = array(reply?)?;
            scan.more |= entries.len() / 2 >= per_shard;
            for pair in entries.chunks(2) {
                let [Value::BulkString(client), Value::BulkString(version)] = pair else {
                    return Err(StoreError::Corrupt(format!("expiry index entry {pair:?}")));
                };
                let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                due.push((n, text(client), text(version)));
            }
        }
        let steps = due.iter().map(|(_, client, _)| {
            let mut call = CallArgs::with_keys([queue_key(&self.keys, client), self.keys.owner(client)]);
            call.arg(now_ms).arg(TAKE_PER_CLIENT.min(EXPIRED_LOG_MAX));
            self.scripts.expire_due.call(client, call)
        });
        let answers = join_all(steps).await;
        let mut nexts = Vec::with_capacity(due.len());
        for ((_, client, _), answer) in due.iter().zip(answers) {
            nexts.push(client_expiries(client, array(answer?)?, &mut scan)?);
        }
        let moves = due
            .iter()
            .zip(nexts)
            .map(|((n, client, version), next)| self.on_index(*n, args(&[&"move", client, version, &next])));
        for moved in join_all(moves).await {
            moved?;
        }
        Ok(scan)
    }
}

/// The arguments of one [`RedisStore::on_index`] call, of mixed types.
fn args(items: &[&dyn ToRedisArgsDyn]) -> Vec<Vec<u8>> {
    items.iter().flat_map(|item| item.redis_args()).collect()
}

trait ToRedisArgsDyn {
    fn redis_args(&self) -> Vec<Vec<u8>>;
}

impl<T: ToRedisArgs> ToRedisArgsDyn for T {
    fn redis_args(&self) -> Vec<Vec<u8>> {
        self.to_redis_args()
    }
}

/// Adds what `EXPIRE_DUE` answered for `client` to `scan`; returns the
/// client's next index score.
fn client_expiries(client: &str, reply: Vec<Value>, scan: &mut ExpiredScan) -> Result<u64, StoreError> {
    let [next, owner, lost, taken @ ..] = reply.as_slice() else {
        return Err(StoreError::Corrupt(format!("expire reply {reply:?}")));
    };
    let user_id = match owner {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        _ => None,
    };
    scan.lost += int(lost)?;
    let next = int(next)?;
    scan.more |= next == 0;
    for pair in taken.chunks(2) {
        let [seq, status] = pair else {
            return Err(StoreError::Corrupt(format!("expire reply {reply:?}")));
        };
        let seq = int(seq)?;
        let base = match status {
            Value::BulkString(b) => parse_status_base(&String::from_utf8_lossy(b)),
            _ => None,
        };
        // A status outlives its message by a day: only a scan that long
        // late finds it gone, and then the message cannot be named.
        let Some((nonce, created_ms, expires_ms)) = base else {
            scan.lost += 1;
            continue;
        };
        scan.messages.push(ExpiredMessage {
            client_id: client.to_owned(),
            user_id: user_id.clone(),
            seq,
            msg_id: message_id(client, seq, nonce),
            created_ms,
            expires_ms,
        });
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_spread_over_every_shard() {
        let mut seen = [0usize; EXPIRY_SHARDS];
        for i in 0..1_600 {
            seen[shard(&format!("client-{i}"))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
        assert_eq!(shard("a"), shard("a"));
    }
}
