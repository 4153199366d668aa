//! Lua scripts of the Redis message queue. Each runs atomically on keys that
//! share the client's hash slot (`dx:{c:<client>}:...`), so the queue works
//! on Redis Cluster. Layout per client, under prefix `P`:
//!
//! - `P h`: hash of the client's counters and its pending messages. Field `m`
//!   holds the counters, packed as doubles (see [`COUNTERS`]); per pending
//!   message `r<seq>` -> its record (MessagePack) and `e<seq>` -> its expiry
//!   and size, packed as two doubles (so acks and expiry read 16 bytes, not
//!   the record); `w` the highest seq written to any connection of the
//!   client (`NOTE_WRITTEN`), which bounds how far a resume may ack
//! - `P s:<seq / 10>`: status bucket (named by the seq's decimal digits
//!   without the last, so `P s:` for seqs 1-9): field `<seq>` = `<nonce> <created>
//!   <expires>`, and `<seq>s`, `<seq>a`, `<seq>x` the time the message was
//!   sent, acked, expired. A small listpack: every write scans it, so
//!   10 messages per bucket (32 cost ~6% more Redis CPU per message than
//!   16, with full buckets; a key per 10 messages costs ~6 bytes each).
//!   Sent marks are plain `HSETNX` writes (`RedisStore::mark_sent_many`).
//! - `P i:<key>`: idempotency key -> `seq~nonce`
//! - `P owner`: the user the client id belongs to (written by the route
//!   claim); the enqueue extends its life with the queue's
//!
//! The pending seqs are those above the low-water mark with an `e<seq>`
//! field: seqs are given out one by one, acks remove a prefix and expiry
//! leaves holes, so a range is read by field name (or, when holes make it
//! much wider than the queue, from the hash's field names).
//!
//! A message costs two fields in `h` and one status field, no key of its
//! own: the layout is shaped by the Redis commands per message and the Lua
//! work around them, the queue's main cost under load (docs/BENCHMARKS.md).
//! Numbers are where that Lua work goes: on Redis 7.0 every `tonumber` of a
//! string is a `strtod` and every number handed to `redis.call` or joined
//! into a string an `snprintf` (each ~0.3-0.5 us here). So the counters and
//! the numeric arguments travel packed (`struct`, no text conversion at
//! all), and values that only pass through (the status text, the time of a
//! note) stay strings.
//!
//! Every key expires `STATUS_RETENTION_MS` (plus up to an hour) after the last
//! message in it would expire, so an abandoned client leaves nothing behind.
//!
//! Each script runs its operation once per call it carries (see `batched!`
//! and `redis_batch`): one EVALSHA does the work of many concurrent callers.

/// The counters in field `m` of a client's hash, in their packed order (each
/// a little-endian double): the last seq given out, the pending count and
/// bytes, the ack watermark, the low-water mark (nothing at or below it is
/// pending), the expired count, the earliest expiry of a pending message (or
/// earlier), the life granted to the hash, the newest status bucket's number
/// and the life granted to it.
pub const COUNTERS: [&str; 10] = [
    "seq",
    "pending",
    "bytes",
    "acked",
    "low",
    "expired",
    "next_expiry",
    "until",
    "bucket",
    "bucket_until",
];

/// The name of message `seq`'s status bucket: `seq` in decimal without its
/// last digit (empty for 1-9). Decimal so that the scripts cut it from the
/// seq's text instead of dividing and formatting a number (Lua formats
/// every number as a float: ~0.4 us each on Redis 7.0).
pub fn status_bucket_name(seq: u64) -> String {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(seq);
    text[..text.len() - 1].to_owned()
}

/// Where [`unpack_counters`] puts the pending count and bytes.
pub const PENDING_COUNT: usize = 1;
pub const PENDING_BYTES: usize = 2;

/// The counters of a client's hash (field `m`), unpacked. `None` if the
/// value is not a packed set.
pub fn unpack_counters(m: &[u8]) -> Option<[f64; COUNTERS.len()]> {
    let mut out = [0.0; COUNTERS.len()];
    if m.len() != out.len() * 8 {
        return None;
    }
    for (value, bytes) in out.iter_mut().zip(m.chunks_exact(8)) {
        *value = f64::from_le_bytes(bytes.try_into().ok()?);
    }
    Some(out)
}

/// Packs numbers as the scripts' `struct.unpack('<d...')` reads them (every
/// value the queue passes is an integer below 2^53, exact in a double).
pub fn pack_numbers(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect()
}

/// Shared prelude: the counters, `tidy` (expires due messages), helpers for
/// status buckets, pending ranges and long argument lists.
macro_rules! prelude {
    () => {
        r"
local NO_EXPIRY = 9007199254740991
local EXTRA_LIFE = 3600000
local RETENTION = 86400000
local COUNTERS = '<dddddddddd'
local PER_BUCKET = 10
-- An `e<seq>` value: the message's expiry and size.
local EXPIRY_SIZE = '<dd'
-- seq, n, bytes, acked, low, expired, nexp, until, bucket, bucket_until
-- (COUNTERS in redis_scripts.rs); a client without them starts from zero.
local function counters(m)
  if not m then return 0, 0, 0, 0, 0, 0, NO_EXPIRY, 0, -1, 0 end
  return struct.unpack(COUNTERS, m)
end
local function save_counters(h, ...)
  redis.call('HSET', h, 'm', struct.pack(COUNTERS, ...))
end
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
-- An integer as text, without the float formatting of tostring and `..`.
local function itoa(n)
  return string.format('%d', n)
end
-- s: a seq as text (see status_bucket_name in redis_scripts.rs).
local function bucket(sp, s)
  return sp .. string.sub(s, 1, -2)
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
-- The pending messages of h in (lo, hi], ascending: their seqs (as text)
-- and their packed `e<seq>` values. n (the pending count) bounds the holes
-- worth probing one by one; a wider range is found from the hash's field names.
local function pending_in(h, lo, hi, n)
  local seqs, fields = {}, {}
  if hi <= lo then return seqs, {} end
  if hi - lo <= 2 * n + 64 then
    local names = {}
    for s = lo + 1, hi do
      local name = itoa(s)
      names[#names + 1] = name
      fields[#fields + 1] = 'e' .. name
    end
    local got, vals = hmget_all(h, fields), {}
    for i = 1, #fields do
      if got[i] then
        seqs[#seqs + 1] = names[i]
        vals[#vals + 1] = got[i]
      end
    end
    return seqs, vals
  end
  local found = {}
  for _, f in ipairs(redis.call('HKEYS', h)) do
    local s = tonumber(string.match(f, '^e(%d+)$'))
    if s and s > lo and s <= hi then found[#found + 1] = s end
  end
  table.sort(found)
  for i, s in ipairs(found) do
    seqs[i] = itoa(s)
    fields[i] = 'e' .. seqs[i]
  end
  return seqs, hmget_all(h, fields)
end
-- Expires due messages of h (pending in (low, top], n of them); returns how
-- many went, their bytes, and the new earliest expiry, for the caller to
-- count. `nexp` is never later than the earliest expiry of a pending message
-- (acks can leave it earlier), so while it is in the future nothing is due
-- and this costs nothing; else the (capped) queue's expiries are read.
local function tidy(h, now, nexp, low, top, n)
  if nexp > now then return 0, 0, nexp end
  local seqs, vals = pending_in(h, low, top, n)
  if #seqs == 0 then return 0, 0, NO_EXPIRY end
  local gone, freed, earliest, notes = {}, 0, NO_EXPIRY, {}
  local sp = status_prefix(h)
  for i, s in ipairs(seqs) do
    local e, z = struct.unpack(EXPIRY_SIZE, vals[i])
    if e <= now then
      gone[#gone + 1] = 'r' .. s
      gone[#gone + 1] = 'e' .. s
      freed = freed + z
      note(notes, sp, s, 'x', itoa(now))
    elseif e < earliest then
      earliest = e
    end
  end
  if #gone > 0 then
    each_chunk('HDEL', h, gone)
    write_notes(notes)
  end
  return #gone / 2, freed, earliest
end
"
    };
}

/// Wraps one operation so that a call runs it for several callers in turn.
/// The operation reads its caller's keys and arguments at offsets:
/// `KEYS[k + i]` and `ARGV[a + i]` (no table per caller); `i` is the
/// caller's index (0-based), for what an optional first part (`before`,
/// run once per call) fetched for all callers at once. ARGV[1] and ARGV[2]
/// say how many keys and arguments each caller brought; then come the
/// callers' keys and arguments in order. The reply holds two items per
/// caller, flat (a table per caller costs ~1 us to turn into a reply): `1,
/// result`, or `0, message` when its operation failed (the others still run: a Redis
/// error inside an array reply would fail the whole call). Errors about the
/// server rather than the data (a demoted master's READONLY, OOM, ...) fail
/// the whole call instead, so that the connection layer sees them and finds
/// the new master: they can only come at a call's first write (a replica
/// refuses every write; Redis lets a script that already wrote go on past
/// maxmemory), so no caller's work was done.
macro_rules! batched {
    ($op:expr) => {
        batched!("", $op)
    };
    ($before:expr, $op:expr) => {
        concat!(
            prelude!(),
            "local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])\n",
            $before,
            "local function op(k, a, i)\n",
            $op,
            r"
end
local out = {}
for i = 0, #KEYS / nk - 1 do
  local ok, r = pcall(op, i * nk, 2 + i * na, i)
  if ok then
    out[2 * i + 1] = 1
    out[2 * i + 2] = r
  else
    local e = tostring(type(r) == 'table' and r.err or r)
    for _, code in ipairs({'READONLY', 'OOM', 'MASTERDOWN', 'LOADING', 'NOREPLICAS'}) do
      if string.sub(e, 1, #code) == code then return redis.error_reply(e) end
    end
    out[2 * i + 1] = 0
    out[2 * i + 2] = e
  end
end
return out"
        )
    };
}

/// KEYS: h idem route (read for all callers at once). ARGV: record, status (`<nonce> <created> <expires>`),
/// expiry and size (packed), and now, max_msgs, max_bytes, idem_ttl_ms (packed).
/// Returns `1 <seq> <route>` stored (the route read in the same step; `1
/// <seq>` without one), `2 <seq>~<nonce>` duplicate, `3 <count> <bytes>` full: a
/// string, as a table costs more to turn into a reply than the concatenation.
pub const ENQUEUE: &str = batched!(
    r"
-- Every caller's route in one command (a call's keys share a slot on a
-- cluster): the script is atomic, so reading them first changes nothing.
local route_keys = {}
for i = 0, #KEYS / nk - 1 do route_keys[i + 1] = KEYS[i * nk + 3] end
local routes = redis.call('MGET', unpack(route_keys))
",
    r"
local h = KEYS[k + 1]
local rec, status, ev = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
local now, max_msgs, max_bytes, idem_ttl = struct.unpack('<dddd', ARGV[a + 4])
local expires, size = struct.unpack(EXPIRY_SIZE, ev)
local seq, n, bytes, acked, low, expired, nexp, granted, bn, bu = counters(redis.call('HGET', h, 'm'))
local gone, freed
gone, freed, nexp = tidy(h, now, nexp, low, seq, n)
n, bytes, expired = n - gone, bytes - freed, expired + gone
if idem_ttl > 0 then
  local v = redis.call('GET', KEYS[k + 2])
  if v then
    if gone > 0 then save_counters(h, seq, n, bytes, acked, low, expired, nexp, granted, bn, bu) end
    return '2 ' .. v
  end
end
if n + 1 > max_msgs or bytes + size > max_bytes then
  if gone > 0 then save_counters(h, seq, n, bytes, acked, low, expired, nexp, granted, bn, bu) end
  return '3 ' .. n .. ' ' .. bytes
end
seq, n, bytes = seq + 1, n + 1, bytes + size
if expires < nexp then nexp = expires end
local until_ms = expires + RETENTION
-- Lives are granted an hour beyond what is needed, so most calls extend none.
local longer = until_ms > granted
if longer then granted = until_ms + EXTRA_LIFE end
local s = itoa(seq)
local b = math.floor(seq / PER_BUCKET)
local renew_bucket = b ~= bn or until_ms > bu
if renew_bucket then bn, bu = b, until_ms + EXTRA_LIFE end
redis.call('HSET', h, 'r' .. s, rec, 'e' .. s, ev, 'm', struct.pack(COUNTERS, seq, n, bytes, acked, low, expired, nexp, granted, bn, bu))
local bk = bucket(status_prefix(h), s)
redis.call('HSET', bk, s, status)
if renew_bucket then redis.call('PEXPIREAT', bk, itoa(bu)) end
if longer then
  redis.call('PEXPIREAT', h, itoa(granted))
  -- The client id stays its owner's while the queue lives (see CLAIM in redis_store.rs).
  local o = string.sub(h, 1, -2) .. 'owner'
  local left = redis.call('PTTL', o)
  if left >= 0 and now + left < granted then redis.call('PEXPIREAT', o, itoa(granted)) end
end
if idem_ttl > 0 then redis.call('SET', KEYS[k + 2], s .. '~' .. string.match(status, '^%d+'), 'PX', idem_ttl) end
local route = routes[i + 1]
if route then return '1 ' .. s .. ' ' .. route end
return '1 ' .. s"
);

/// KEYS: h. ARGV: now after max.
/// Returns {acked, seq1, record1, seq2, record2, ...}.
pub const PENDING: &str = batched!(
    r"
local h = KEYS[k + 1]
local now, after, max = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
local seq, n, bytes, acked, low, expired, nexp, granted, bn, bu = counters(redis.call('HGET', h, 'm'))
local gone, freed, earliest = tidy(h, now, nexp, low, seq, n)
n = n - gone
-- tidy ran (nexp had passed): keep what it found.
if earliest ~= nexp then save_counters(h, seq, n, bytes - freed, acked, low, expired + gone, earliest, granted, bn, bu) end
local seqs = pending_in(h, math.max(after, low), seq, n)
local fields = {}
for i = 1, math.min(#seqs, max) do fields[i] = 'r' .. seqs[i] end
local records = hmget_all(h, fields)
local out = {acked}
for i = 1, #fields do
  out[#out + 1] = seqs[i]
  out[#out + 1] = records[i]
end
return out"
);

/// KEYS: h. ARGV: seq now resume. Returns the removed count, or with
/// `resume` (a connect's `last_seq`) the seq the replay starts after: the
/// ack goes no further than the high-water mark `w` of what earlier
/// connections were written (or the ack watermark), so a made-up `last_seq`
/// removes nothing the client never got.
pub const ACK: &str = batched!(
    r"
-- No expiry sweep here: a message at or below an ack reached the client, so
-- it is acked even if its TTL ran out meanwhile.
local h = KEYS[k + 1]
local s, now, resume = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
local ack = tonumber(s)
local got = redis.call('HMGET', h, 'm', 'e' .. s, 'w')
local seq, n, bytes, acked, low, expired, nexp, granted, bn, bu = counters(got[1])
local changed, from = false, low
if resume then
  -- Later seqs stay above what the client has seen, even if the store lost it.
  if seq < ack then
    seq = ack
    changed = true
  end
  local upto = math.max(acked, tonumber(got[3] or '0'))
  if ack > upto then
    ack = upto
    s = itoa(ack)
    got[2] = redis.call('HGET', h, 'e' .. s)
  end
end
if ack > acked then
  acked = ack
  changed = true
end
-- `low`: nothing at or below it is pending. Usually the ack watermark, but
-- an ack beyond the last seq given out (without resume) leaves the seqs
-- given out later pending, as the memory store does.
if ack > low then
  low = math.min(ack, seq)
  changed = true
end
local seqs, vals
if ack == from + 1 then
  -- The usual ack, of the message after the last one: read above.
  seqs, vals = {}, {}
  if got[2] then seqs[1], vals[1] = s, got[2] end
else
  seqs, vals = pending_in(h, from, ack, n)
end
if #seqs > 0 then
  local freed, gone, notes, sp = 0, {}, {}, status_prefix(h)
  for i, q in ipairs(seqs) do
    local _, z = struct.unpack(EXPIRY_SIZE, vals[i])
    freed = freed + z
    gone[#gone + 1] = 'r' .. q
    gone[#gone + 1] = 'e' .. q
    note(notes, sp, q, 'a', now)
  end
  each_chunk('HDEL', h, gone)
  write_notes(notes)
  n, bytes = n - #seqs, bytes - freed
  changed = true
end
if changed then
  save_counters(h, seq, n, bytes, acked, low, expired, nexp, granted, bn, bu)
  -- Counters written for a client that never had a message must not live forever.
  if granted == 0 and redis.call('PTTL', h) == -1 then
    redis.call('PEXPIREAT', h, tonumber(now) + RETENTION)
  end
end
if resume then return ack end
return #seqs"
);

/// KEYS: h. ARGV: seq. Raises the written high-water mark `w` of a queue
/// that exists (a missing one has nothing a resume could remove).
pub const NOTE_WRITTEN: &str = r"
local w = redis.call('HMGET', KEYS[1], 'm', 'w')
if w[1] and tonumber(ARGV[1]) > tonumber(w[2] or '0') then redis.call('HSET', KEYS[1], 'w', ARGV[1]) end
return 0";

/// KEYS: h. ARGV: now. Returns {pending, bytes, acked, expired}.
pub const INFO: &str = batched!(
    r"
local h = KEYS[k + 1]
local seq, n, bytes, acked, low, expired, nexp, granted, bn, bu = counters(redis.call('HGET', h, 'm'))
local gone, freed, earliest = tidy(h, tonumber(ARGV[a + 1]), nexp, low, seq, n)
n, bytes, expired = n - gone, bytes - freed, expired + gone
if earliest ~= nexp then save_counters(h, seq, n, bytes, acked, low, expired, earliest, granted, bn, bu) end
return {n, bytes, acked, expired}"
);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::STATUS_RETENTION_MS;

    /// Messages whose statuses share one bucket key (`PER_BUCKET` in the
    /// scripts, which only compare bucket numbers; the names come from
    /// [`status_bucket_name`]).
    const STATUSES_PER_BUCKET: u64 = 10;

    #[test]
    fn the_scripts_retention_is_the_stores() {
        // The scripts spell STATUS_RETENTION_MS out: Rust cannot concat! a const.
        for script in [ENQUEUE, PENDING, ACK, INFO] {
            assert!(script.contains(&format!("local RETENTION = {STATUS_RETENTION_MS}\n")));
        }
    }

    #[test]
    fn the_scripts_bucket_statuses_as_rust_does() {
        for script in [ENQUEUE, PENDING, ACK, INFO] {
            assert!(script.contains(&format!("local PER_BUCKET = {STATUSES_PER_BUCKET}\n")));
        }
    }

    #[test]
    fn a_bucket_is_named_by_the_seqs_digits_but_the_last() {
        assert_eq!(status_bucket_name(1), "");
        assert_eq!(status_bucket_name(9), "");
        assert_eq!(status_bucket_name(10), "1");
        assert_eq!(status_bucket_name(19), "1");
        assert_eq!(status_bucket_name(1234), "123");
        // The bucket number the scripts compare (floor(seq / PER_BUCKET)) names the same bucket.
        for seq in [10u64, 99, 100, 12_345, (1 << 53) - 1] {
            assert_eq!(status_bucket_name(seq), (seq / STATUSES_PER_BUCKET).to_string());
        }
    }

    #[test]
    fn the_scripts_pack_the_counters_rust_unpacks() {
        let format = format!("local COUNTERS = '<{}'\n", "d".repeat(COUNTERS.len()));
        for script in [ENQUEUE, PENDING, ACK, INFO] {
            assert!(script.contains(&format));
        }
        let packed = pack_numbers(&[7, 3, 300, 4, 4, 0, 9_007_199_254_740_991, 1, 2, (1 << 53) - 1]);
        let counters = unpack_counters(&packed).expect("ten doubles");
        assert_eq!(counters[0], 7.0);
        assert_eq!(counters[9], 9_007_199_254_740_991.0);
        assert!(unpack_counters(&packed[..72]).is_none());
        assert_eq!((COUNTERS[PENDING_COUNT], COUNTERS[PENDING_BYTES]), ("pending", "bytes"));
    }
}
