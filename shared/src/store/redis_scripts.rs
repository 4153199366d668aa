//! Lua scripts of the Redis message queue. Each runs atomically on keys that
//! share the client's hash slot (`dx:{c:<client>}:...`), so the queue works
//! on Redis Cluster. Layout per client, under prefix `P`:
//!
//! - `P h`: hash of the client's counters and its pending messages: `seq`
//!   (last seq given out), `n` and `bytes` (pending), `acked` (watermark),
//!   `expired` (count), `nexp` (earliest expiry of a pending message, or
//!   earlier), `until` (the life granted to `h`), `sb`/`su` (the newest status
//!   bucket and the life granted to it); per pending message `r<seq>` -> its
//!   record (MessagePack) and `e<seq>` -> `<expires_ms>:<size>` (so acks and
//!   expiry read a few bytes, not the record)
//! - `P s:<seq / 32>`: status bucket: field `<seq>` = `<nonce> <created>
//!   <expires>`, and `<seq>s`, `<seq>a`, `<seq>x` the time the message was
//!   sent, acked, expired. 32 messages per bucket keep it a small listpack.
//!   Sent marks are plain `HSETNX` writes (`RedisStore::mark_sent_many`).
//! - `P i:<key>`: idempotency key -> `seq~nonce`
//!
//! The pending seqs are those above `acked` with an `e<seq>` field: seqs are
//! given out one by one, acks remove a prefix and expiry leaves holes, so a
//! range is read by field name (or, when holes make it much wider than the
//! queue, from the hash's field names).
//!
//! A message costs two fields in `h` and one status field, no key of its
//! own: the layout is shaped by the Redis commands per message and the Lua
//! work around them, the queue's main cost under load (docs/BENCHMARKS.md).
//! Numbers handed to `redis.call` or joined into strings are formatted by
//! `snprintf` in Redis 7.0 (~0.5 us each here), so values that only pass
//! through stay strings.
//!
//! Every key expires `STATUS_RETENTION_MS` (plus up to an hour) after the last
//! message in it would expire, so an abandoned client leaves nothing behind.
//!
//! Each script runs its operation once per call it carries (see `batched!`
//! and `redis_batch`): one EVALSHA does the work of many concurrent callers.

/// Shared prelude: `tidy` expires due messages; helpers for status buckets,
/// pending ranges and long argument lists.
macro_rules! prelude {
    () => {
        r"
local NO_EXPIRY = '9007199254740991'
local EXTRA_LIFE = 3600000
local RETENTION = 86400000
-- `P h` -> `P s:`, the prefix of the client's status buckets.
local function status_prefix(h)
  return string.sub(h, 1, -2) .. 's:'
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
-- The pending messages of h in (lo, hi], ascending: their seqs and their
-- `e<seq>` values. n (the pending count) bounds the holes worth probing one
-- by one; a wider range is found from the hash's field names instead.
local function pending_in(h, lo, hi, n)
  local seqs, fields = {}, {}
  if hi <= lo then return seqs, {} end
  if hi - lo <= 2 * n + 64 then
    for s = lo + 1, hi do fields[#fields + 1] = 'e' .. s end
    local got, vals = hmget_all(h, fields), {}
    for i = 1, #fields do
      if got[i] then
        seqs[#seqs + 1] = lo + i
        vals[#vals + 1] = got[i]
      end
    end
    return seqs, vals
  end
  for _, f in ipairs(redis.call('HKEYS', h)) do
    local s = tonumber(string.match(f, '^e(%d+)$'))
    if s and s > lo and s <= hi then seqs[#seqs + 1] = s end
  end
  table.sort(seqs)
  for i, s in ipairs(seqs) do fields[i] = 'e' .. s end
  return seqs, hmget_all(h, fields)
end
-- Expires due messages of h (pending in (low, top], n of them); returns how
-- many went, their bytes, and the new earliest expiry. `nexp` is never later
-- than the earliest expiry of a pending message (acks can leave it earlier),
-- so while it is in the future nothing is due and this costs nothing; else
-- the (capped) queue's expiries are read.
local function tidy(h, now, nexp, low, top, n)
  if nexp and tonumber(nexp) > now then return 0, 0, nexp end
  local seqs, vals = pending_in(h, low, top, n)
  -- Nothing stored: write nothing either (a key without a life would stay forever).
  if #seqs == 0 then return 0, 0, NO_EXPIRY end
  local gone, freed, earliest, notes = {}, 0, NO_EXPIRY, {}
  local sp = status_prefix(h)
  for i, s in ipairs(seqs) do
    local e, z = string.match(vals[i], '^(%d+):(%d+)$')
    if tonumber(e) <= now then
      gone[#gone + 1] = 'r' .. s
      gone[#gone + 1] = 'e' .. s
      freed = freed + tonumber(z)
      note(notes, sp, s, 'x', now)
    elseif tonumber(e) < tonumber(earliest) then
      earliest = e
    end
  end
  if #gone > 0 then
    each_chunk('HDEL', h, gone)
    write_notes(notes)
    redis.call('HINCRBY', h, 'bytes', -freed)
    redis.call('HINCRBY', h, 'expired', #gone / 2)
    redis.call('HINCRBY', h, 'n', -#gone / 2)
  end
  redis.call('HSET', h, 'nexp', earliest)
  return #gone / 2, freed, earliest
end
"
    };
}

/// Wraps one operation so that a call runs it for several callers in turn.
/// The operation reads its caller's keys and arguments at offsets:
/// `KEYS[k + i]` and `ARGV[a + i]` (no table per caller). ARGV[1] and ARGV[2]
/// say how many keys and arguments each caller brought; then come the
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
            "local function op(k, a)\n",
            $op,
            r"
end
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 0, #KEYS / nk - 1 do
  local ok, r = pcall(op, i * nk, 2 + i * na)
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

/// KEYS: h idem route. ARGV: record nonce created expires now max_msgs
/// max_bytes size idem_ttl_ms.
/// Returns {1, seq, route} stored (route read in the same step), {2, "seq~nonce"}
/// duplicate, {3, count, bytes} full.
pub const ENQUEUE: &str = batched!(
    r"
local h = KEYS[k + 1]
local rec, nonce, created, expires, now, max_msgs, max_bytes, size, idem_ttl = unpack(ARGV, a + 1, a + 9)
local meta = redis.call('HMGET', h, 'bytes', 'until', 'n', 'nexp', 'seq', 'sb', 'su', 'low')
local top, n = tonumber(meta[5] or '0'), tonumber(meta[3] or '0')
local gone, freed, nexp = tidy(h, tonumber(now), meta[4], tonumber(meta[8] or '0'), top, n)
if idem_ttl ~= '0' then
  local v = redis.call('GET', KEYS[k + 2])
  if v then return {2, v} end
end
n = n - gone
local bytes = tonumber(meta[1] or '0') - freed
if n + 1 > tonumber(max_msgs) or bytes + size > tonumber(max_bytes) then return {3, n, bytes} end
local seq = top + 1
local s = tostring(seq)
local fields = {'r' .. s, rec, 'e' .. s, expires .. ':' .. size, 'seq', s, 'bytes', bytes + size, 'n', n + 1}
if tonumber(expires) < tonumber(nexp) then
  fields[#fields + 1] = 'nexp'
  fields[#fields + 1] = expires
end
local until_ms = tonumber(expires) + RETENTION
-- Lives are granted an hour beyond what is needed, so most calls extend none.
local granted = tonumber(meta[2] or '0')
local longer = until_ms > granted
if longer then
  granted = until_ms + EXTRA_LIFE
  fields[#fields + 1] = 'until'
  fields[#fields + 1] = granted
end
local b = status_prefix(h) .. math.floor(seq / 32)
local renew_bucket = b ~= meta[6] or until_ms > tonumber(meta[7] or '0')
if renew_bucket then
  fields[#fields + 1] = 'sb'
  fields[#fields + 1] = b
  fields[#fields + 1] = 'su'
  fields[#fields + 1] = until_ms + EXTRA_LIFE
end
redis.call('HSET', h, unpack(fields))
redis.call('HSET', b, s, nonce .. ' ' .. created .. ' ' .. expires)
if renew_bucket then redis.call('PEXPIREAT', b, until_ms + EXTRA_LIFE) end
if longer then redis.call('PEXPIREAT', h, granted) end
if idem_ttl ~= '0' then redis.call('SET', KEYS[k + 2], s .. '~' .. nonce, 'PX', idem_ttl) end
return {1, seq, redis.call('GET', KEYS[k + 3])}"
);

/// KEYS: h. ARGV: now after max.
/// Returns {acked, seq1, record1, seq2, record2, ...}.
pub const PENDING: &str = batched!(
    r"
local h = KEYS[k + 1]
local now, after, max = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
local meta = redis.call('HMGET', h, 'acked', 'nexp', 'seq', 'n', 'low')
local low, top, n = tonumber(meta[5] or '0'), tonumber(meta[3] or '0'), tonumber(meta[4] or '0')
local gone = tidy(h, now, meta[2], low, top, n)
local seqs = pending_in(h, math.max(after, low), top, n - gone)
local fields = {}
for i = 1, math.min(#seqs, max) do fields[i] = 'r' .. seqs[i] end
local records = hmget_all(h, fields)
local out = {tonumber(meta[1] or '0')}
for i = 1, #fields do
  out[#out + 1] = seqs[i]
  out[#out + 1] = records[i]
end
return out"
);

/// KEYS: h. ARGV: seq now resume. Returns removed count.
pub const ACK: &str = batched!(
    r"
-- No expiry sweep here: a message at or below an ack reached the client, so
-- it is acked even if its TTL ran out meanwhile.
local h = KEYS[k + 1]
local s, now, resume = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
local ack = tonumber(s)
-- `low`: nothing at or below it is pending. Usually the ack watermark, but
-- an ack beyond the last seq given out (without resume) leaves the seqs
-- given out later pending, as the memory store does.
local meta = redis.call('HMGET', h, 'acked', 'n', 'bytes', 'seq', 'until', 'low', 'e' .. s)
local low, top = tonumber(meta[6] or '0'), tonumber(meta[4] or '0')
-- h changes in one HSET at the end (each call inside a script costs).
local fields = {}
if ack > tonumber(meta[1] or '0') then
  fields[#fields + 1] = 'acked'
  fields[#fields + 1] = s
end
if resume == '1' and top < ack then
  top = ack
  fields[#fields + 1] = 'seq'
  fields[#fields + 1] = s
end
if ack > low then
  fields[#fields + 1] = 'low'
  fields[#fields + 1] = ack <= top and s or top
end
local seqs, vals
if ack == low + 1 then
  -- The usual ack, of the message after the last one: read above.
  seqs, vals = {}, {}
  if meta[7] then seqs[1], vals[1] = s, meta[7] end
else
  seqs, vals = pending_in(h, low, ack, tonumber(meta[2] or '0'))
end
if #seqs > 0 then
  local freed, gone, notes, sp = 0, {}, {}, status_prefix(h)
  for i, q in ipairs(seqs) do
    freed = freed + tonumber(string.match(vals[i], ':(%d+)$'))
    gone[#gone + 1] = 'r' .. q
    gone[#gone + 1] = 'e' .. q
    note(notes, sp, q, 'a', now)
  end
  each_chunk('HDEL', h, gone)
  write_notes(notes)
  fields[#fields + 1] = 'bytes'
  fields[#fields + 1] = tonumber(meta[3] or '0') - freed
  fields[#fields + 1] = 'n'
  fields[#fields + 1] = tonumber(meta[2] or '0') - #seqs
end
if #fields > 0 then
  redis.call('HSET', h, unpack(fields))
  -- Counters written for a client that never had a message must not live forever.
  if not meta[5] and redis.call('PTTL', h) == -1 then
    redis.call('PEXPIREAT', h, tonumber(now) + RETENTION)
  end
end
return #seqs"
);

/// KEYS: h. ARGV: now. Returns {pending, bytes, acked, expired}.
pub const INFO: &str = batched!(
    r"
local h = KEYS[k + 1]
local fields = {'nexp', 'low', 'seq', 'n', 'bytes', 'acked', 'expired'}
local meta = redis.call('HMGET', h, unpack(fields))
local gone = tidy(h, tonumber(ARGV[a + 1]), meta[1], tonumber(meta[2] or '0'), tonumber(meta[3] or '0'), tonumber(meta[4] or '0'))
if gone > 0 then meta = redis.call('HMGET', h, unpack(fields)) end
return {tonumber(meta[4] or '0'), tonumber(meta[5] or '0'), tonumber(meta[6] or '0'), tonumber(meta[7] or '0')}"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::STATUS_RETENTION_MS;

    #[test]
    fn the_scripts_retention_is_the_stores() {
        // The scripts spell STATUS_RETENTION_MS out: Rust cannot concat! a const.
        for script in [ENQUEUE, PENDING, ACK, INFO] {
            assert!(script.contains(&format!("local RETENTION = {STATUS_RETENTION_MS}\n")));
        }
    }
}
