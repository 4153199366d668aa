-- RENEW_ROUTE. KEYS: route, queue hash, owner (one slot); ARGV: value,
-- lease ms, owner life ms. Renews the route for the lease while it holds
-- this connection's value, and writes it back if it vanished. A renewed
-- connection keeps its owner alive too (renewed once half of its life is
-- gone), so a connection older than the owner's life cannot be taken over
-- by another user. Answers {outcome, the client's last seq}, outcome
-- `renewed`, `restored` or `replaced` (another connection owns the route).
local v = redis.call('GET', KEYS[1])
local seq = load_counters(C, redis.call('HGET', KEYS[2], 'm')).seq
if v and v ~= ARGV[1] then return {'replaced', seq} end
if v then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
local left = redis.call('PTTL', KEYS[3])
if left >= 0 and left * 2 < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
if v then return {'renewed', seq} end
return {'restored', seq}
