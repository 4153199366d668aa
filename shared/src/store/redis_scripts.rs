//! Lua scripts of the Redis message queue. Each runs atomically on keys that
//! share the client's hash slot (`dx:{c:<client>}:...`), so the queue works
//! on Redis Cluster. Layout per client, under prefix `P`:
//!
//! - `P h`: hash of the client's counters and its pending records: `seq`
//!   (last seq given out), `n` and `bytes` (pending), `acked` (watermark),
//!   `expired` (count), `nexp` (earliest expiry of a pending message, or
//!   later), `until` (the life granted to `h` and `q`), `sb`/`su` (the newest
//!   status bucket and the life granted to it), and `r<seq>` -> message
//!   record (MessagePack) while the message is pending
//! - `P q`: sorted set of pending messages, score seq, member
//!   `<seq>:<expires_ms>:<size>` (so acks and expiry need no other read)
//! - `P s:<seq / 32>`: status bucket: field `<seq>` = `<nonce> <created>
//!   <expires>`, and `<seq>s`, `<seq>a`, `<seq>x` the time the message was
//!   sent, acked, expired. 32 messages per bucket keep it a small listpack.
//!   Sent marks are plain `HSETNX` writes (`RedisStore::mark_sent_many`).
//! - `P i:<key>`: idempotency key -> `seq~nonce`
//!
//! A message costs one record field, one zset member and one status field, no
//! key of its own: the layout is shaped by the Redis commands per message,
//! the queue's main cost under load (docs/BENCHMARKS.md).
//!
//! Every key expires `STATUS_RETENTION_MS` (plus up to an hour) after the last
//! message in it would expire, so an abandoned client leaves nothing behind.
//!
//! Each script runs its operation once per call it carries (see `batched!`
//! and `redis_batch`): one EVALSHA does the work of many concurrent callers.

/// Shared prelude: `tidy` expires due messages; helpers for the member
/// format, status buckets and long argument lists.
macro_rules! prelude {
    () => {
        r"
local NO_EXPIRY = '9007199254740991'
local EXTRA_LIFE = 3600000
-- seq, expires, size of a `q` member (strings).
local function parts(m)
  return string.match(m, '^(%d+):(%d+):(%d+)$')
end
-- Runs cmd on key with the items of list appended, in chunks (unpack is bounded).
local function each_chunk(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #got do out[i + j - 1] = got[j] end
  end
  return out
end
local function bucket(sp, s)
  return sp .. math.floor(tonumber(s) / 32)
end
-- Collects status fields (`<seq><suffix>` = t) per bucket for write_notes.
local function note(notes, sp, s, suffix, t)
  local k = bucket(sp, s)
  local b = notes[k]
  if not b then
    b = {}
    notes[k] = b
  end
  b[#b + 1] = s .. suffix
  b[#b + 1] = t
end
local function write_notes(notes)
  for k, b in pairs(notes) do each_chunk('HSET', k, b) end
end
-- Expires due messages; returns how many went, their bytes, and the new
-- earliest expiry. `nexp` (from h) is never later than the earliest expiry of
-- a pending message (acks can leave it earlier), so while it is in the
-- future nothing is due and this costs nothing; else the queue (capped) is read.
local function tidy(h, q, sp, now, nexp)
  if nexp and tonumber(nexp) > now then return 0, 0, nexp end
  local all = redis.call('ZRANGE', q, 0, -1)
  -- Nothing stored: write nothing either (a key without a life would stay forever).
  if #all == 0 then return 0, 0, NO_EXPIRY end
  local gone, freed, earliest = {}, 0, NO_EXPIRY
  local records, notes = {}, {}
  for _, m in ipairs(all) do
    local s, e, z = parts(m)
    if tonumber(e) <= now then
      gone[#gone + 1] = m
      records[#records + 1] = 'r' .. s
      freed = freed + tonumber(z)
      note(notes, sp, s, 'x', now)
    elseif tonumber(e) < tonumber(earliest) then
      earliest = e
    end
  end
  if #gone > 0 then
    each_chunk('ZREM', q, gone)
    each_chunk('HDEL', h, records)
    write_notes(notes)
    redis.call('HINCRBY', h, 'bytes', -freed)
    redis.call('HINCRBY', h, 'expired', #gone)
    redis.call('HINCRBY', h, 'n', -#gone)
  end
  redis.call('HSET', h, 'nexp', earliest)
  return #gone, freed, earliest
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

/// KEYS: h q idem route. ARGV: record nonce created expires now max_msgs
/// max_bytes size idem_ttl_ms status_prefix retention_ms.
/// Returns {1, seq, route} stored (route read in the same step), {2, "seq~nonce"}
/// duplicate, {3, count, bytes} full.
pub const ENQUEUE: &str = batched!(
    r"
local now = tonumber(ARGV[5])
local meta = redis.call('HMGET', KEYS[1], 'bytes', 'until', 'n', 'nexp', 'seq', 'sb', 'su')
local gone, freed, nexp = tidy(KEYS[1], KEYS[2], ARGV[10], now, meta[4])
if ARGV[9] ~= '0' then
  local v = redis.call('GET', KEYS[3])
  if v then return {2, v} end
end
local n = tonumber(meta[3] or '0') - gone
local bytes = tonumber(meta[1] or '0') - freed
local size = tonumber(ARGV[8])
if n + 1 > tonumber(ARGV[6]) or bytes + size > tonumber(ARGV[7]) then return {3, n, bytes} end
local seq = tonumber(meta[5] or '0') + 1
redis.call('ZADD', KEYS[2], seq, seq .. ':' .. ARGV[4] .. ':' .. ARGV[8])
if tonumber(ARGV[4]) < tonumber(nexp) then nexp = ARGV[4] end
local until_ms = tonumber(ARGV[4]) + tonumber(ARGV[11])
-- Lives are granted an hour beyond what is needed, so most calls extend none.
local fields = {'r' .. seq, ARGV[1], 'seq', seq, 'bytes', bytes + size, 'n', n + 1, 'nexp', nexp}
local granted = tonumber(meta[2] or '0')
local longer = until_ms > granted
if longer then
  granted = until_ms + EXTRA_LIFE
  fields[#fields + 1] = 'until'
  fields[#fields + 1] = granted
end
local b = bucket(ARGV[10], seq)
local renew_bucket = b ~= meta[6] or until_ms > tonumber(meta[7] or '0')
if renew_bucket then
  fields[#fields + 1] = 'sb'
  fields[#fields + 1] = b
  fields[#fields + 1] = 'su'
  fields[#fields + 1] = until_ms + EXTRA_LIFE
end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', b, seq, ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4])
if renew_bucket then redis.call('PEXPIREAT', b, until_ms + EXTRA_LIFE) end
if longer then redis.call('PEXPIREAT', KEYS[1], granted) end
-- An emptied queue's zset was deleted; the new one needs its life again.
if longer or n == 0 then redis.call('PEXPIREAT', KEYS[2], granted) end
if ARGV[9] ~= '0' then redis.call('SET', KEYS[3], seq .. '~' .. ARGV[2], 'PX', ARGV[9]) end
return {1, seq, redis.call('GET', KEYS[4])}"
);

/// KEYS: h q. ARGV: now after max status_prefix.
/// Returns {acked, seq1, record1, seq2, record2, ...}.
pub const PENDING: &str = batched!(
    r"
local meta = redis.call('HMGET', KEYS[1], 'acked', 'nexp')
tidy(KEYS[1], KEYS[2], ARGV[4], tonumber(ARGV[1]), meta[2])
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[2], '+inf', 'LIMIT', 0, tonumber(ARGV[3]))
local seqs, fields = {}, {}
for i, m in ipairs(members) do
  seqs[i] = parts(m)
  fields[i] = 'r' .. seqs[i]
end
local records = hmget_all(KEYS[1], fields)
local out = {tonumber(meta[1] or '0')}
for i = 1, #seqs do
  out[#out + 1] = tonumber(seqs[i])
  out[#out + 1] = records[i]
end
return out"
);

/// KEYS: h q. ARGV: seq now resume status_prefix retention_ms. Returns removed count.
pub const ACK: &str = batched!(
    r"
-- No expiry sweep here: a message at or below an ack reached the client, so
-- it is acked even if its TTL ran out meanwhile.
local a = tonumber(ARGV[1])
local meta = redis.call('HMGET', KEYS[1], 'acked', 'n', 'bytes', 'seq', 'until')
-- h changes in one HSET at the end (each call inside a script costs).
local fields = {}
if a > tonumber(meta[1] or '0') then
  fields[#fields + 1] = 'acked'
  fields[#fields + 1] = a
end
if ARGV[3] == '1' and tonumber(meta[4] or '0') < a then
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = a
end
local done = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', a)
if #done > 0 then
  local freed, records, notes = 0, {}, {}
  for i, m in ipairs(done) do
    local s, _, z = parts(m)
    freed = freed + tonumber(z)
    records[i] = 'r' .. s
    note(notes, ARGV[4], s, 'a', ARGV[2])
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', a)
  each_chunk('HDEL', KEYS[1], records)
  write_notes(notes)
  fields[#fields + 1] = 'bytes'
  fields[#fields + 1] = tonumber(meta[3] or '0') - freed
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = tonumber(meta[2] or '0') - #done
end
if #fields > 0 then
  redis.call('HSET', KEYS[1], unpack(fields))
  -- Counters written for a client that never had a message must not live forever.
  if not meta[5] and redis.call('PTTL', KEYS[1]) == -1 then
    redis.call('PEXPIREAT', KEYS[1], tonumber(ARGV[2]) + tonumber(ARGV[5]))
  end
end
return #done"
);

/// KEYS: h q. ARGV: now status_prefix. Returns {pending, bytes, acked, expired}.
pub const INFO: &str = batched!(
    r"
tidy(KEYS[1], KEYS[2], ARGV[2], tonumber(ARGV[1]), redis.call('HGET', KEYS[1], 'nexp'))
local meta = redis.call('HMGET', KEYS[1], 'bytes', 'acked', 'expired')
return {redis.call('ZCARD', KEYS[2]), tonumber(meta[1] or '0'), tonumber(meta[2] or '0'), tonumber(meta[3] or '0')}"
);
