-- Puts a push fallback in one shard of the schedule (`redis/fallbacks.rs`).
-- KEYS: the shard's due set (entry -> due ms), its values hash
-- (entry -> "<expires_ms>\n<spec>"). ARGV: entry, due_ms, value, max entries.
-- Returns 1 when it waits (or already did), 0 when the shard is full.
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
