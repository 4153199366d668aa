//! Redis store. One multiplexed connection (the `redis` connection manager)
//! pipelines concurrent commands and reconnects on its own; compare-and-set
//! steps run as Lua so they are atomic on the server.

use std::time::Duration;

use async_trait::async_trait;
use redis::{AsyncCommands, RedisError};

use std::sync::LazyLock;

use redis::Value;

use super::redis_batch::{BatchScript, BatchedScript, CallArgs};
use super::redis_conn::{PubSubSource, RedisConn};
use super::redis_scripts::{self, pack_numbers, status_bucket_name};
use super::{
    message_id, Claim, ClaimError, Enqueued, Keys, LeaseCheck, MessageRecord, MessageState, MessageStatus, NewMessage,
    Pending, QueueInfo, QueueLimits, Renewal, Route, Store, StoreError, StoredMessage, STATUS_RETENTION_MS,
    USER_CLIENTS_TTL,
};
use crate::protocol::MAX_LAST_SEQ;

static ENQUEUE: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(redis_scripts::ENQUEUE));
static PENDING: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(redis_scripts::PENDING));
static ACK: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(redis_scripts::ACK));
static INFO: LazyLock<BatchScript> = LazyLock::new(|| BatchScript::new(redis_scripts::INFO));

/// The key of one client's queue hash (`h`, see `redis_scripts`); the
/// scripts find the client's status buckets from it.
fn queue_key(keys: &Keys, client_id: &str) -> String {
    keys.client_key(client_id, "h")
}

/// The status bucket of message `seq` (see `redis_scripts`).
fn status_bucket(keys: &Keys, client_id: &str, seq: u64) -> String {
    let mut key = keys.client_key(client_id, "s:");
    key.push_str(&status_bucket_name(seq));
    key
}

/// Sent marks per pipeline: bounds one request's size.
const SENT_MARKS_PER_PIPELINE: usize = 512;

fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(i) => Ok((*i).max(0) as u64),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Corrupt("expected a number".into())),
        other => Err(StoreError::Corrupt(format!("expected a number, got {other:?}"))),
    }
}

fn array(v: Value) -> Result<Vec<Value>, StoreError> {
    match v {
        Value::Array(items) => Ok(items),
        other => Err(StoreError::Corrupt(format!("expected an array, got {other:?}"))),
    }
}

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

/// How long an ack may wait for others to share its script call.
const ACK_LINGER: Duration = Duration::from_millis(1);

/// Renewals sent per pipeline, so one refresh round never builds a huge request.
const REFRESH_BATCH: usize = 512;

/// The queue scripts, each with its batching task (`redis_batch`).
#[derive(Clone)]
struct QueueScripts {
    enqueue: BatchedScript,
    pending: BatchedScript,
    ack: BatchedScript,
    info: BatchedScript,
}

impl QueueScripts {
    /// Key and argument counts as in `redis_scripts`.
    fn start(conn: &RedisConn) -> Self {
        QueueScripts {
            enqueue: BatchedScript::start(conn.clone(), &ENQUEUE, 3, 4, Duration::ZERO),
            pending: BatchedScript::start(conn.clone(), &PENDING, 1, 3, Duration::ZERO),
            // An ack is off every latency path: its caller has what it needs.
            ack: BatchedScript::start(conn.clone(), &ACK, 1, 3, ACK_LINGER),
            info: BatchedScript::start(conn.clone(), &INFO, 1, 1, Duration::ZERO),
        }
    }
}

#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConn,
    scripts: QueueScripts,
    keys: Keys,
    /// Where registry announcements are subscribed to.
    pubsub: PubSubSource,
    announcements: super::registry::Announcements,
    relaying: std::sync::Arc<std::sync::atomic::AtomicBool>,
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
    /// Connects to `url` (one server, `redis+cluster://` or
    /// `redis+sentinel://`, see `redis_conn`); every key starts with `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let conn = RedisConn::connect(url).await.map_err(unavailable)?;
        // Loaded up front: otherwise every call in flight at the start meets
        // NOSCRIPT and loads the script itself. Best effort (calls load it too).
        for script in [
            redis_scripts::ENQUEUE,
            redis_scripts::PENDING,
            redis_scripts::ACK,
            redis_scripts::INFO,
        ] {
            if let Err(e) = conn.load_everywhere(script).await {
                tracing::debug!(error = %e, "could not preload a script");
            }
        }
        Ok(RedisStore {
            pubsub: conn.pubsub_source(url),
            scripts: QueueScripts::start(&conn),
            conn,
            keys: Keys::new(prefix),
            announcements: Default::default(),
            relaying: Default::default(),
        })
    }

    pub(super) fn pubsub(&self) -> PubSubSource {
        self.pubsub.clone()
    }

    pub(super) fn announcements(&self) -> &super::registry::Announcements {
        &self.announcements
    }

    pub(super) fn relaying(&self) -> &std::sync::atomic::AtomicBool {
        &self.relaying
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub(super) fn conn(&self) -> RedisConn {
        self.conn.clone()
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().clamp(1, u128::from(u64::MAX)) as u64
}

#[async_trait]
impl Store for RedisStore {
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
            .arg(last_seq.min(crate::protocol::MAX_LAST_SEQ));
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

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING").query_async(&mut conn).await.map_err(unavailable)?;
        Ok(())
    }

    async fn enqueue(
        &self,
        client_id: &str,
        msg: &NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> Result<Enqueued, StoreError> {
        let prefix = self.keys.client(client_id);
        let idem_key = [prefix.as_str(), "i:", msg.idempotency_key.as_deref().unwrap_or("")].concat();
        let r = &msg.record;
        let idem_ttl = if msg.idempotency_key.is_some() {
            msg.idempotency_ttl_ms.max(1)
        } else {
            0
        };
        let mut call = CallArgs::with_keys([[prefix.as_str(), "h"].concat()]);
        call.key(idem_key)
            .key([prefix.as_str(), "route"].concat())
            .arg(r.encode())
            .arg(status_base(r))
            .arg(pack_numbers(&[r.expires_ms, r.size()]))
            .arg(pack_numbers(&[now_ms, limits.max_messages, limits.max_bytes, idem_ttl]));
        match self.scripts.enqueue.call(client_id, call).await? {
            Value::BulkString(reply) => enqueued(client_id, r.nonce, &String::from_utf8_lossy(&reply)),
            other => Err(StoreError::Corrupt(format!("enqueue reply {other:?}"))),
        }
    }

    async fn pending(&self, client_id: &str, after: u64, max: usize, now_ms: u64) -> Result<Pending, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(now_ms).arg(after).arg(max);
        let reply = array(self.scripts.pending.call(client_id, call).await?)?;
        let (acked, rest) = reply
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("empty pending reply".into()))?;
        let mut messages = Vec::with_capacity(rest.len() / 2);
        for pair in rest.chunks(2) {
            let [seq, Value::BulkString(record)] = pair else {
                return Err(StoreError::Corrupt("pending message without record".into()));
            };
            let seq = int(seq)?;
            let record = MessageRecord::decode(record)?;
            messages.push(StoredMessage {
                seq,
                msg_id: message_id(client_id, seq, record.nonce),
                record,
            });
        }
        Ok(Pending {
            messages,
            acked: int(acked)?,
        })
    }

    async fn ack(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<u64, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(seq).arg(now_ms).arg(0u8);
        int(&self.scripts.ack.call(client_id, call).await?)
    }

    async fn resume(&self, client_id: &str, last_seq: u64, now_ms: u64) -> Result<u64, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(last_seq.min(MAX_LAST_SEQ)).arg(now_ms).arg(1u8);
        int(&self.scripts.ack.call(client_id, call).await?)
    }

    async fn note_written(&self, client_id: &str, seq: u64) -> Result<(), StoreError> {
        let mut note = redis::cmd("EVAL");
        note.arg(redis_scripts::NOTE_WRITTEN)
            .arg(1)
            .arg(queue_key(&self.keys, client_id))
            .arg(seq.min(MAX_LAST_SEQ));
        self.conn.run_all(vec![note]).await.map_err(unavailable)?;
        Ok(())
    }

    async fn mark_sent(&self, client_id: &str, seq: u64, now_ms: u64) -> Result<(), StoreError> {
        self.mark_sent_many(&[(client_id.to_owned(), seq)], now_ms).await
    }

    /// Plain pipelined writes, no script: a mark only adds the sent time to
    /// the message's status (the first one stays), and reading ignores a
    /// sent time later than the ack or expiry it lost the race to. If the
    /// status bucket is gone (long expired), the write recreates it with the
    /// retention as its life instead of leaving it forever.
    async fn mark_sent_many(&self, items: &[(String, u64)], now_ms: u64) -> Result<(), StoreError> {
        for chunk in items.chunks(SENT_MARKS_PER_PIPELINE) {
            let mut cmds = Vec::with_capacity(chunk.len() * 2);
            for (client_id, seq) in chunk {
                let bucket = status_bucket(&self.keys, client_id, *seq);
                let mut mark = redis::cmd("HSETNX");
                let mut field = itoa::Buffer::new().format(*seq).to_owned();
                field.push('s');
                mark.arg(&bucket).arg(field).arg(now_ms);
                let mut life = redis::cmd("PEXPIRE");
                life.arg(&bucket).arg(STATUS_RETENTION_MS).arg("NX");
                cmds.extend([mark, life]);
            }
            self.conn.run_all(cmds).await.map_err(unavailable)?;
        }
        Ok(())
    }

    async fn message_status(
        &self,
        client_id: &str,
        seq: u64,
        nonce: u32,
        now_ms: u64,
    ) -> Result<Option<MessageStatus>, StoreError> {
        let mut conn = self.conn.clone();
        let bucket = status_bucket(&self.keys, client_id, seq);
        let fields: Vec<Option<String>> = redis::cmd("HMGET")
            .arg(bucket)
            .arg(seq)
            .arg(format!("{seq}s"))
            .arg(format!("{seq}a"))
            .arg(format!("{seq}x"))
            .query_async(&mut conn)
            .await
            .map_err(unavailable)?;
        let [Some(base), sent, acked, expired] =
            <[Option<String>; 4]>::try_from(fields).map_err(|f| StoreError::Corrupt(format!("status reply {f:?}")))?
        else {
            return Ok(None);
        };
        let Some((stored_nonce, created_at, expires_at)) = parse_status_base(&base) else {
            return Err(StoreError::Corrupt(format!("message status {base:?}")));
        };
        if stored_nonce != nonce {
            return Ok(None);
        }
        let time = |t: Option<String>| t.and_then(|v| v.parse::<u64>().ok());
        let (acked_at, expired_at) = (time(acked), time(expired));
        // A sent mark that lost the race to the ack or expiry is not a send.
        let sent_at = time(sent).filter(|&t| acked_at.or(expired_at).is_none_or(|end| t <= end));
        let state = if expired_at.is_some() {
            MessageState::Expired
        } else if acked_at.is_some() {
            MessageState::Acked
        } else if sent_at.is_some() {
            MessageState::Sent
        } else {
            MessageState::Queued
        };
        Ok(Some(
            MessageStatus {
                message_id: message_id(client_id, seq, nonce),
                client_id: client_id.to_owned(),
                seq,
                state,
                created_at,
                expires_at,
                sent_at,
                acked_at,
                expired_at,
            }
            .as_of(now_ms),
        ))
    }

    async fn queue_info(&self, client_id: &str, now_ms: u64) -> Result<QueueInfo, StoreError> {
        let mut call = CallArgs::with_keys([queue_key(&self.keys, client_id)]);
        call.arg(now_ms);
        let reply = array(self.scripts.info.call(client_id, call).await?)?;
        match reply.as_slice() {
            [pending, bytes, acked, expired] => Ok(QueueInfo {
                pending: int(pending)?,
                pending_bytes: int(bytes)?,
                last_acked_seq: int(acked)?,
                expired: int(expired)?,
            }),
            other => Err(StoreError::Corrupt(format!("info reply {other:?}"))),
        }
    }
}

/// The ENQUEUE script's answer: `1 <seq> [<route>]`, `2 <seq>~<nonce>` or
/// `3 <count> <bytes>`.
fn enqueued(client_id: &str, nonce: u32, reply: &str) -> Result<Enqueued, StoreError> {
    let corrupt = || StoreError::Corrupt(format!("enqueue reply {reply:?}"));
    let mut parts = reply.splitn(3, ' ');
    let (code, first, rest) = (parts.next(), parts.next().ok_or_else(corrupt)?, parts.next());
    match code {
        Some("1") => {
            let seq = first.parse().map_err(|_| corrupt())?;
            Ok(Enqueued::Stored {
                seq,
                msg_id: message_id(client_id, seq, nonce),
                route: rest.map(Route::decode).transpose()?,
            })
        }
        Some("2") => {
            let (seq, nonce) = first
                .split_once('~')
                .and_then(|(s, n)| Some((s.parse().ok()?, n.parse().ok()?)))
                .ok_or_else(corrupt)?;
            Ok(Enqueued::Duplicate {
                seq,
                msg_id: message_id(client_id, seq, nonce),
            })
        }
        Some("3") => Ok(Enqueued::Full {
            messages: first.parse().map_err(|_| corrupt())?,
            bytes: rest.and_then(|b| b.parse().ok()).ok_or_else(corrupt)?,
        }),
        _ => Err(corrupt()),
    }
}

/// `<nonce> <created> <expires>`, the part of a status written at enqueue.
fn status_base(r: &MessageRecord) -> String {
    let mut base = String::with_capacity(40);
    let mut digits = itoa::Buffer::new();
    base.push_str(digits.format(r.nonce));
    base.push(' ');
    base.push_str(digits.format(r.created_ms));
    base.push(' ');
    base.push_str(digits.format(r.expires_ms));
    base
}

/// Reads what `status_base` wrote.
fn parse_status_base(base: &str) -> Option<(u32, u64, u64)> {
    let mut parts = base.split(' ');
    let parsed = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(parsed)
}
