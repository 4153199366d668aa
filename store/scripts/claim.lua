-- CLAIM. KEYS: route, epoch counter, owner, queue hash (one slot); ARGV:
-- node id, lease ms, owner life ms, user, last_seq. Unless the client id
-- belongs to another user (answer {'taken'}, nothing changed), takes the
-- next epoch, writes the route `<node id>|<epoch>` for the lease and keeps
-- the owner for its life, or as long as the queue lives if that is longer
-- (enqueue.lua extends it with the queue); raises the queue's seq to the
-- connect's last_seq before the route is visible. Answers
-- {'claimed', epoch, previous route or false}.
local owner = redis.call('GET', KEYS[3])
if owner and owner ~= ARGV[4] then return {'taken'} end
local last = tonumber(ARGV[5])
if last > 0 then
  local m = redis.call('HGET', KEYS[4], 'm')
  local c = load_counters(C, m)
  if c.seq < last then
    c.seq = last
    redis.call('HSET', KEYS[4], 'm', pack_counters(c))
    if not m and redis.call('PTTL', KEYS[4]) == -1 then redis.call('PEXPIRE', KEYS[4], ARGV[3]) end
  end
end
local e = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
local life = math.max(tonumber(ARGV[3]), redis.call('PTTL', KEYS[4]))
redis.call('SET', KEYS[3], ARGV[4], 'PX', life)
local prev = redis.call('SET', KEYS[1], ARGV[1] .. '|' .. e, 'PX', ARGV[2], 'GET')
return {'claimed', e, prev}
