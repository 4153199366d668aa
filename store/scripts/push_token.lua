-- PUSH_TOKEN. KEYS: the client's push-token hash (`P push`); ARGV: field
-- (`<provider>|<token>`), value (`<registered_ms> [<app>]`), max, ttl_ms,
-- now. Adds or renews the token, drops tokens past their life, then the
-- oldest beyond `max`; the hash lives `ttl_ms` past this registration.
-- Answers how many tokens the client has.
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local max, ttl, now = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local all = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #all, 2 do
  local t = tonumber(string.match(all[i + 1], '^(%d+)'))
  if not t or t + ttl <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    live[#live + 1] = {all[i], t}
  end
end
if #live > max then
  table.sort(live, function(a, b) return a[2] > b[2] end)
  for i = max + 1, #live do redis.call('HDEL', KEYS[1], live[i][1]) end
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return math.min(#live, max)
