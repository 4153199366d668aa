-- The counters of a client's queue: field `m` of its hash `P h`, packed as
-- little-endian doubles in the order `load_counters` names them (COUNTERS in
-- store/src/redis/scripts.rs lists the same names; a test compares them).
-- Packed, not text: every `tonumber` is a strtod and every number handed to
-- redis.call an snprintf (~0.3-0.5 us each on Redis 7.0).
--   seq          the last seq given out
--   pending      pending messages, and their `bytes`
--   acked        the ack watermark
--   low          the low-water mark: nothing at or below it is pending
--   expired      messages that expired unacked
--   next_expiry  the earliest expiry of a pending message, or earlier
--   granted      the life granted to the hash (ms since the epoch)
--   bucket       the newest status bucket's number, and `bucket_until` its life
local COUNTERS = '<dddddddddd'
local NO_EXPIRY = 9007199254740991
-- One table per script call, reused by each of its callers in turn; built
-- with every field, so that loading the counters never grows it.
local C = {seq = 0, pending = 0, bytes = 0, acked = 0, low = 0, expired = 0, next_expiry = 0, granted = 0,
  bucket = 0, bucket_until = 0}
-- Loads the counters packed in m into c; a client without them starts from zero.
local function load_counters(c, m)
  if m then
    c.seq, c.pending, c.bytes, c.acked, c.low, c.expired, c.next_expiry, c.granted, c.bucket, c.bucket_until =
      struct.unpack(COUNTERS, m)
  else
    c.seq, c.pending, c.bytes, c.acked, c.low, c.expired, c.next_expiry, c.granted, c.bucket, c.bucket_until =
      0, 0, 0, 0, 0, 0, NO_EXPIRY, 0, -1, 0
  end
  return c
end
local function pack_counters(c)
  return struct.pack(COUNTERS, c.seq, c.pending, c.bytes, c.acked, c.low, c.expired, c.next_expiry, c.granted,
    c.bucket, c.bucket_until)
end
