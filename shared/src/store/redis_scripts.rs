//! Lua scripts of the Redis message queue. Each runs atomically on keys that
//! share the client's hash slot (`dx:{c:<client>}:...`), so the queue works
//! on Redis Cluster. Layout per client, under prefix `P`:
//!
//! - `P seq`: last seq given out (string counter)
//! - `P q`: sorted set of pending seqs (score = seq)
//! - `P exp`: sorted set of pending seqs by expiry time (score = ms)
//! - `P b`: hash seq -> message record (MessagePack)
//! - `P meta`: hash `bytes` and `n` (pending), `acked` (watermark), `expired`
//!   (count), `nexp` (earliest expiry of a pending message, or later), `until`
//!   (the life granted to the keys)
//! - `P m:<seq>`: hash with the status of message seq
//! - `P i:<key>`: idempotency key -> `seq~nonce`
//!
//! Every key expires `STATUS_RETENTION_MS` after the last message in it would
//! expire, so an abandoned client leaves nothing behind.
//!
//! Each script runs its operation once per call it carries (see `batched!`
//! and `redis_batch`): one EVALSHA does the work of many concurrent callers.

/// Shared prelude: `tidy` expires due messages; `keep` extends a key's life.
/// Queue scripts take KEYS = q, exp, b, meta, seq and the status prefix `P m:`.
macro_rules! prelude {
    () => {
        r"
local NO_EXPIRY = '9007199254740991'
-- Expires due messages; returns how many left, their bytes, and the new
-- earliest expiry. meta's `nexp` is never later than the earliest expiry of
-- a pending message (acks can leave it earlier), so while it is in the future
-- nothing is due and this costs nothing. Without it (data from older
-- versions) the expiry index is read.
local function tidy(q, exp, b, meta, mprefix, now, nexp)
  if nexp and tonumber(nexp) > now then return 0, 0, nexp end
  local due = redis.call('ZRANGEBYSCORE', exp, '-inf', now)
  local gone, freed = 0, 0
  for _, s in ipairs(due) do
    if redis.call('ZREM', q, s) == 1 then
      gone = gone + 1
      freed = freed + tonumber(redis.call('HGET', mprefix .. s, 'size') or '0')
      redis.call('HSET', mprefix .. s, 'state', 'expired', 'expired', now)
    end
    redis.call('HDEL', b, s)
  end
  if #due > 0 then redis.call('ZREMRANGEBYSCORE', exp, '-inf', now) end
  if gone > 0 then
    redis.call('HINCRBY', meta, 'bytes', -freed)
    redis.call('HINCRBY', meta, 'expired', gone)
    if redis.call('HEXISTS', meta, 'n') == 1 then redis.call('HINCRBY', meta, 'n', -gone) end
  end
  local first = redis.call('ZRANGE', exp, 0, 0, 'WITHSCORES')
  nexp = first[2] or NO_EXPIRY
  redis.call('HSET', meta, 'nexp', nexp)
  return gone, freed, nexp
end
-- Extends the life of keys[1..n] to at least until_ms. The horizon already
-- granted is kept in meta, and extended an hour beyond what is needed, so most
-- calls cost one HGET instead of a PEXPIREAT per key.
-- `fresh`: the queue was empty, so q, exp and b (keys[1..3]) were just
-- recreated without a TTL and get the granted horizon.
local function keep(keys, meta, n, until_ms, fresh, granted)
  if until_ms > granted then
    granted = until_ms + 3600000
    redis.call('HSET', meta, 'until', granted)
    for i = 1, n do redis.call('PEXPIREAT', keys[i], granted) end
  elseif fresh then
    for i = 1, 3 do redis.call('PEXPIREAT', keys[i], granted) end
  end
end
"
    };
}

/// Wraps one operation, written against `KEYS` and `ARGV` as a plain script
/// would be, so that a call runs it for several callers in turn. ARGV[1] and
/// ARGV[2] say how many keys and arguments each caller brought; then come the
/// callers' keys and arguments in order. Each caller gets `{1, result}`, or
/// `{0, message}` when its operation failed (the others still run: a Redis
/// error inside an array reply would fail the whole call). Errors about the
/// server rather than the data (a demoted master's READONLY, OOM, ...) fail
/// the whole call instead, so that the connection layer sees them and finds
/// the new master: they can only come at a call's first write (a replica
/// refuses every write; Redis lets a script that already wrote go on past
/// maxmemory), so no caller's work was done.
macro_rules! batched {
    ($op:expr) => {
        concat!(
            prelude!(),
            "local function op(KEYS, ARGV)\n",
            $op,
            r"
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 0, #KEYS / nk - 1 do
  local ok, r = pcall(op, {unpack(KEYS, i * nk + 1, (i + 1) * nk)}, {unpack(ARGV, 3 + i * na, 2 + (i + 1) * na)})
  if ok then
    out[i + 1] = {1, r}
  else
    local e = tostring(type(r) == 'table' and r.err or r)
    for _, code in ipairs({'READONLY', 'OOM', 'MASTERDOWN', 'LOADING', 'NOREPLICAS'}) do
      if string.sub(e, 1, #code) == code then return redis.error_reply(e) end
    end
    out[i + 1] = {0, e}
  end
end
return out"
        )
    };
}

/// KEYS: q exp b meta seq idem route. ARGV: record nonce created expires now
/// max_msgs max_bytes size idem_ttl_ms mprefix retention_ms.
/// Returns {1, seq, route} stored (route read in the same step), {2, "seq~nonce"}
/// duplicate, {3, count, bytes} full.
pub const ENQUEUE: &str = batched!(
    r"
local now = tonumber(ARGV[5])
-- meta's `n` counts pending messages (absent in data from older versions: ZCARD then).
local meta = redis.call('HMGET', KEYS[4], 'bytes', 'until', 'n', 'nexp')
local gone, freed, nexp = tidy(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[10], now, meta[4])
if ARGV[9] ~= '0' then
  local v = redis.call('GET', KEYS[6])
  if v then return {2, v} end
end
local n
if meta[3] then n = tonumber(meta[3]) - gone else n = redis.call('ZCARD', KEYS[1]) end
local bytes = tonumber(meta[1] or '0') - freed
local size = tonumber(ARGV[8])
if n + 1 > tonumber(ARGV[6]) or bytes + size > tonumber(ARGV[7]) then return {3, n, bytes} end
local seq = redis.call('INCR', KEYS[5])
redis.call('ZADD', KEYS[1], seq, seq)
redis.call('ZADD', KEYS[2], ARGV[4], seq)
redis.call('HSET', KEYS[3], seq, ARGV[1])
if tonumber(ARGV[4]) < tonumber(nexp) then nexp = ARGV[4] end
redis.call('HSET', KEYS[4], 'bytes', bytes + size, 'n', n + 1, 'nexp', nexp)
local m = ARGV[10] .. seq
redis.call('HSET', m, 'state', 'queued', 'nonce', ARGV[2], 'size', size, 'created', ARGV[3], 'expires', ARGV[4])
local until_ms = tonumber(ARGV[4]) + tonumber(ARGV[11])
redis.call('PEXPIREAT', m, until_ms)
if ARGV[9] ~= '0' then redis.call('SET', KEYS[6], seq .. '~' .. ARGV[2], 'PX', ARGV[9]) end
keep(KEYS, KEYS[4], 5, until_ms, n == 0, tonumber(meta[2] or '0'))
return {1, seq, redis.call('GET', KEYS[7])}"
);

/// KEYS: q exp b meta. ARGV: now after max mprefix.
/// Returns {acked, seq1, record1, seq2, record2, ...}.
pub const PENDING: &str = batched!(
    r"
local meta = redis.call('HMGET', KEYS[4], 'acked', 'nexp')
tidy(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[4], tonumber(ARGV[1]), meta[2])
local seqs = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
local out = {tonumber(meta[1] or '0')}
for _, s in ipairs(seqs) do
  out[#out + 1] = tonumber(s)
  out[#out + 1] = redis.call('HGET', KEYS[3], s)
end
return out"
);

/// KEYS: q exp b meta seq. ARGV: seq now resume mprefix retention_ms. Returns removed count.
pub const ACK: &str = batched!(
    r"
-- No expiry sweep here: a message at or below an ack reached the client, so
-- it is acked even if its TTL ran out meanwhile.
local now = tonumber(ARGV[2])
local retention = tonumber(ARGV[5])
local a = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[4], 'acked', 'n', 'bytes')
-- meta's fields change in one HSET at the end (each call inside a script costs).
local fields = {}
if a > tonumber(meta[1] or '0') then
  fields[#fields + 1] = 'acked'
  fields[#fields + 1] = a
end
if ARGV[3] == '1' and tonumber(redis.call('GET', KEYS[5]) or '0') < a then
  redis.call('SET', KEYS[5], a, 'KEEPTTL')
  if redis.call('PTTL', KEYS[5]) == -1 then redis.call('PEXPIREAT', KEYS[5], now + retention) end
end
local done = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', a)
local freed = 0
for _, s in ipairs(done) do
  local m = ARGV[4] .. s
  freed = freed + tonumber(redis.call('HGET', m, 'size') or '0')
  redis.call('HSET', m, 'state', 'acked', 'acked', now)
  redis.call('HDEL', KEYS[3], s)
  redis.call('ZREM', KEYS[2], s)
end
if #done > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', a)
  fields[#fields + 1] = 'bytes'
  fields[#fields + 1] = tonumber(meta[3] or '0') - freed
  if meta[2] then
    fields[#fields + 1] = 'n'
    fields[#fields + 1] = tonumber(meta[2]) - #done
  end
end
if #fields > 0 then
  redis.call('HSET', KEYS[4], unpack(fields))
  -- A watermark written to a fresh key must not live forever.
  if not meta[1] and redis.call('PTTL', KEYS[4]) == -1 then
    redis.call('PEXPIREAT', KEYS[4], now + retention)
  end
end
return #done"
);

/// KEYS: m. ARGV: now. Queued -> sent.
pub const MARK_SENT: &str = batched!(
    r"
if redis.call('HGET', KEYS[1], 'state') == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'sent', 'sent', ARGV[1])
  return 1
end
return 0"
);

/// KEYS: q exp b meta. ARGV: now mprefix. Returns {pending, bytes, acked, expired}.
pub const INFO: &str = batched!(
    r"
tidy(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[2], tonumber(ARGV[1]), redis.call('HGET', KEYS[4], 'nexp'))
local meta = redis.call('HMGET', KEYS[4], 'bytes', 'acked', 'expired')
return {redis.call('ZCARD', KEYS[1]), tonumber(meta[1] or '0'), tonumber(meta[2] or '0'), tonumber(meta[3] or '0')}"
);
