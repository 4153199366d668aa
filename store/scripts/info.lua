-- INFO. Per caller, KEYS: h; ARGV: now. Answers {pending, bytes, acked, expired}.
local function op(k, a, i)
  local h = KEYS[k + 1]
  local c = load_counters(C, redis.call('HGET', h, 'm'))
  if tidy(h, c, tonumber(ARGV[a + 1])) then save_counters(h, c) end
  return {c.pending, c.bytes, c.acked, c.expired}
end
