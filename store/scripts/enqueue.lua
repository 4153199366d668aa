-- ENQUEUE. Per caller, KEYS: h idem route; ARGV: record, status
-- (`<nonce> <created> <expires>`), expiry and size (packed), and now,
-- max_msgs, max_bytes, idem_ttl_ms, report (packed). Answers a string (a table
-- costs more to turn into a reply than the concatenation):
--   `stored <seq> [<route>]`    stored (with the route, read in the same step)
--   `stored+<at> <seq> [<route>]`  the same, and the client's entry in the
--                               expiry index must be `at` (EXPIRE_DUE)
--   `duplicate <seq>~<nonce>`   the idempotency key names an earlier message
--   `full <count> <bytes>`      a cap refused it

-- Every caller's route in one command (a call's keys share a slot on a
-- cluster): the script is atomic, so reading them first changes nothing.
local route_keys = {}
for i = 0, #KEYS / nk - 1 do route_keys[i + 1] = KEYS[i * nk + 3] end
local routes = redis.call('MGET', unpack(route_keys))

local function op(k, a, i)
  local h = KEYS[k + 1]
  local rec, status, ev = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local now, max_msgs, max_bytes, idem_ttl, report = struct.unpack('<ddddd', ARGV[a + 4])
  local expires, size = struct.unpack(EXPIRY_SIZE, ev)
  local m = redis.call('HGET', h, 'm')
  local c = load_counters(C, m)
  local tidied = tidy(h, c, now)
  if idem_ttl > 0 then
    local v = redis.call('GET', KEYS[k + 2])
    if v then
      if tidied then save_counters(h, c) end
      return 'duplicate ' .. v
    end
  end
  if c.pending + 1 > max_msgs or c.bytes + size > max_bytes then
    if tidied then save_counters(h, c) end
    return 'full ' .. c.pending .. ' ' .. c.bytes
  end
  c.seq, c.pending, c.bytes = c.seq + 1, c.pending + 1, c.bytes + size
  -- The index entry must be no later than the earliest expiry: set when this
  -- message lowers it, or when the client's expiries start being reported.
  local index = report == 1 and expires < c.next_expiry
  if expires < c.next_expiry then c.next_expiry = expires end
  local until_ms = expires + RETENTION
  -- Lives are granted an hour beyond what is needed, so most calls extend none.
  local longer = until_ms > c.granted
  if longer then c.granted = until_ms + EXTRA_LIFE end
  local s = itoa(c.seq)
  local b = math.floor(c.seq / PER_BUCKET)
  local renew_bucket = b ~= c.bucket or until_ms > c.bucket_until
  if renew_bucket then c.bucket, c.bucket_until = b, until_ms + EXTRA_LIFE end
  if report == 1 then
    -- `t` rides on the write every enqueue makes; the count of fields it
    -- added (r, e, m if new, t if new) tells whether `t` is new.
    local added = redis.call('HSET', h, 'r' .. s, rec, 'e' .. s, ev, 'm', pack_counters(c), 't', '1')
    if added > (m and 2 or 3) then index = true end
  else
    redis.call('HSET', h, 'r' .. s, rec, 'e' .. s, ev, 'm', pack_counters(c))
  end
  local bk = bucket(status_prefix(h), s)
  redis.call('HSET', bk, s, status)
  if renew_bucket then redis.call('PEXPIREAT', bk, itoa(c.bucket_until)) end
  if longer then
    redis.call('PEXPIREAT', h, itoa(c.granted))
    -- The client id stays its owner's while the queue lives (see claim.lua).
    local o = string.sub(h, 1, -2) .. 'owner'
    local left = redis.call('PTTL', o)
    if left >= 0 and now + left < c.granted then redis.call('PEXPIREAT', o, itoa(c.granted)) end
  end
  if idem_ttl > 0 then redis.call('SET', KEYS[k + 2], s .. '~' .. string.match(status, '^%d+'), 'PX', idem_ttl) end
  local code = 'stored '
  if index then
    -- Expiries waiting to be reported are due now: the entry must not move later.
    local at = c.next_expiry
    if redis.call('HEXISTS', h, 'xn') == 1 then at = now end
    code = 'stored+' .. itoa(at) .. ' '
  end
  local route = routes[i + 1]
  if route then return code .. s .. ' ' .. route end
  return code .. s
end
