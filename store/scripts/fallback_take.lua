-- Hands out the due push fallbacks of one shard (`redis/fallbacks.rs`). Each
-- entry handed out is leased: its score moves to now + lease, so no other
-- caller gets it until the lease runs out without a finish. An entry past its
-- message's expiry is removed unsent and counted.
-- KEYS: the shard's due set, its values hash. ARGV: now_ms, lease_ms, limit.
-- Returns {expired, more, entry, value, entry, value, ...}.
local now = tonumber(ARGV[1])
local limit = tonumber(ARGV[3])
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, limit)
local leased_until = string.format('%d', now + tonumber(ARGV[2]))
local out = {0, 0}
if #due >= limit then
  out[2] = 1
end
for _, entry in ipairs(due) do
  local value = redis.call('HGET', KEYS[2], entry)
  local expires = value and tonumber(string.match(value, '^(%d+)\n'))
  if not expires or expires <= now then
    redis.call('ZREM', KEYS[1], entry)
    redis.call('HDEL', KEYS[2], entry)
    out[1] = out[1] + 1
  else
    redis.call('ZADD', KEYS[1], leased_until, entry)
    out[#out + 1] = entry
    out[#out + 1] = value
  end
end
return out
