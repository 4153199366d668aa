-- EXPIRY_SET. Per caller, KEYS: one expiry index shard's sorted set,
-- versions hash and version counter (see expiry_index.lua); ARGV: client,
-- at. After an enqueue lowered the client's earliest expiry: its entry is
-- due at `at`, with a new version. Batched (batch.lua): under load many
-- enqueues share one call.
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local function op(k, a, i)
  local v = redis.call('INCR', KEYS[k + 3])
  redis.call('ZADD', KEYS[k + 1], ARGV[a + 2], ARGV[a + 1])
  redis.call('HSET', KEYS[k + 2], ARGV[a + 1], v)
  return v
end
