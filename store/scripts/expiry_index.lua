-- EXPIRY_INDEX. KEYS: one shard of the expiry index: its sorted set (client
-- -> the time its expiries are due), its versions hash (client -> version of
-- its entry) and its version counter, all in the shard's slot (entries are
-- set by EXPIRY_SET). ARGV[1] names the operation:
--   `due <now> <max>`      up to max entries due: {client1, version1, ...}
--   `move <client> <version> <next>`  a scan's verdict (`next`, NO_EXPIRY to
--                          remove), applied only if no EXPIRY_SET came since the
--                          scan read `version`: an enqueue that raced the
--                          scan wrote what must stay
local NO_EXPIRY = 9007199254740991
local op = ARGV[1]
if op == 'due' then
  local clients = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
  if #clients == 0 then return {} end
  local versions = redis.call('HMGET', KEYS[2], unpack(clients))
  local out = {}
  for i, client in ipairs(clients) do
    out[#out + 1] = client
    out[#out + 1] = versions[i] or '0'
  end
  return out
elseif op == 'move' then
  if (redis.call('HGET', KEYS[2], ARGV[2]) or '0') ~= ARGV[3] then return 0 end
  if tonumber(ARGV[4]) >= NO_EXPIRY then
    redis.call('ZREM', KEYS[1], ARGV[2])
    redis.call('HDEL', KEYS[2], ARGV[2])
  else
    redis.call('ZADD', KEYS[1], ARGV[4], ARGV[2])
  end
  return 1
end
return redis.error_reply('unknown expiry index operation')
