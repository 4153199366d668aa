-- ACK. Per caller, KEYS: h; ARGV: seq now resume. Answers the removed
-- count, or with `resume` (a connect's `last_seq`) the seq the replay
-- starts after: the ack goes no further than the high-water mark `w` of
-- what earlier connections were written (or the ack watermark), so a
-- made-up `last_seq` removes nothing the client never got.
-- No expiry sweep here: a message at or below an ack reached the client, so
-- it is acked even if its TTL ran out meanwhile.
local function op(k, a, i)
  local h = KEYS[k + 1]
  local s, now, resume = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3] == '1'
  local ack = tonumber(s)
  local got = redis.call('HMGET', h, 'm', 'e' .. s, 'w')
  local c = load_counters(C, got[1])
  local changed, from = false, c.low
  if resume then
    -- Later seqs stay above what the client has seen, even if the store lost it.
    if c.seq < ack then
      c.seq = ack
      changed = true
    end
    local upto = math.max(c.acked, tonumber(got[3] or '0'))
    if ack > upto then
      ack = upto
      s = itoa(ack)
      got[2] = redis.call('HGET', h, 'e' .. s)
    end
  end
  if ack > c.acked then
    c.acked = ack
    changed = true
  end
  -- `low`: nothing at or below it is pending. Usually the ack watermark, but
  -- an ack beyond the last seq given out (without resume) leaves the seqs
  -- given out later pending, as the memory store does.
  if ack > c.low then
    c.low = math.min(ack, c.seq)
    changed = true
  end
  local seqs, vals
  if ack == from + 1 then
    -- The usual ack, of the message after the last one: read above.
    seqs, vals = {}, {}
    if got[2] then seqs[1], vals[1] = s, got[2] end
  else
    seqs, vals = pending_in(h, from, ack, c.pending)
  end
  if #seqs > 0 then
    local freed, gone, notes, sp = 0, {}, {}, status_prefix(h)
    for j, q in ipairs(seqs) do
      local _, z = struct.unpack(EXPIRY_SIZE, vals[j])
      freed = freed + z
      gone[#gone + 1] = 'r' .. q
      gone[#gone + 1] = 'e' .. q
      note(notes, sp, q, 'a', now)
    end
    each_chunk('HDEL', h, gone)
    write_notes(notes)
    c.pending, c.bytes = c.pending - #seqs, c.bytes - freed
    changed = true
  end
  if changed then
    save_counters(h, c)
    -- Counters written for a client that never had a message must not live forever.
    if c.granted == 0 and redis.call('PTTL', h) == -1 then
      redis.call('PEXPIREAT', h, tonumber(now) + RETENTION)
    end
  end
  if resume then return ack end
  return #seqs
end
