-- EXPIRE_DUE. Per caller, KEYS: h owner; ARGV: now max. Expires the due
-- messages of a client whose expiries are reported and takes up to `max` of
-- the expiries waiting to be reported (`x`, see log_expired), so each is
-- reported once, whoever scans. Answers {next, owner, lost, seq1, status1,
-- seq2, status2, ...}: `next` the earliest time the client's index entry is
-- due again (0: more wait now; NO_EXPIRY: none, the entry may go), `owner`
-- the client's user (false if gone), `lost` expiries that cannot be reported,
-- and each taken seq with its status base (`<nonce> <created> <expires>`,
-- false if its status bucket is gone).
local function op(k, a, i)
  local h = KEYS[k + 1]
  local now, max = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local m = redis.call('HGET', h, 'm')
  if not m then return {NO_EXPIRY, false, 0} end
  local c = load_counters(C, m)
  local changed = tidy(h, c, now)
  -- Acks leave next_expiry early; once nothing is pending it must say so,
  -- since the index entry goes and only an enqueue that lowers it adds one.
  if c.pending == 0 and c.next_expiry ~= NO_EXPIRY then
    c.next_expiry = NO_EXPIRY
    changed = true
  end
  if changed then save_counters(h, c) end
  local got = redis.call('HMGET', h, 'x', 'xd')
  local lost = tonumber(got[2] or '0')
  local seqs = {}
  if got[1] and got[1] ~= '' then
    for s in string.gmatch(got[1], '%d+') do seqs[#seqs + 1] = s end
  end
  local take = math.min(#seqs, max)
  if take < #seqs then
    redis.call('HSET', h, 'x', table.concat(seqs, ' ', take + 1), 'xn', itoa(#seqs - take))
  elseif #seqs > 0 then
    redis.call('HDEL', h, 'x', 'xn')
  end
  if lost > 0 then redis.call('HDEL', h, 'xd') end
  local next = c.pending > 0 and c.next_expiry or NO_EXPIRY
  if take < #seqs then next = 0 end
  local out = {next, redis.call('GET', KEYS[k + 2]), lost}
  local sp = status_prefix(h)
  for j = 1, take do
    out[#out + 1] = seqs[j]
    out[#out + 1] = redis.call('HGET', bucket(sp, seqs[j]), seqs[j])
  end
  return out
end
