-- PENDING. Per caller, KEYS: h; ARGV: now after max. Answers
-- {acked, seq1, record1, seq2, record2, ...}: up to max pending messages
-- above `after`, in seq order.
local function op(k, a, i)
  local h = KEYS[k + 1]
  local now, after, max = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local c = load_counters(C, redis.call('HGET', h, 'm'))
  if tidy(h, c, now) then save_counters(h, c) end
  local seqs = pending_in(h, math.max(after, c.low), c.seq, c.pending)
  local fields = {}
  for j = 1, math.min(#seqs, max) do fields[j] = 'r' .. seqs[j] end
  local records = hmget_all(h, fields)
  local out = {c.acked}
  for j = 1, #fields do
    out[#out + 1] = seqs[j]
    out[#out + 1] = records[j]
  end
  return out
end
