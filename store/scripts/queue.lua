-- What every queue script shares: the limits, `tidy` (expires due
-- messages), helpers for status buckets, pending ranges and long argument
-- lists. Every queue script is batched (see batch.lua): ARGV[1] and ARGV[2]
-- say how many keys and arguments each caller brought.
local EXTRA_LIFE = 3600000
local RETENTION = 86400000
local PER_BUCKET = 10
-- An `e<seq>` value: the message's expiry and size.
local EXPIRY_SIZE = '<dd'
-- EXPIRED_LOG_MAX in messages.rs: unreported expiries kept per client.
local LOG_MAX = 10000
local nk, na = tonumber(ARGV[1]), tonumber(ARGV[2])
local function save_counters(h, c)
  redis.call('HSET', h, 'm', pack_counters(c))
end
-- `P h` -> `P s:`, the prefix of the client's status buckets.
local function status_prefix(h)
  return string.sub(h, 1, -2) .. 's:'
end
-- Runs cmd on key with the items of list appended, in chunks (unpack is bounded).
local function each_chunk(cmd, key, list)
  for i = 1, #list, 1000 do
    redis.call(cmd, key, unpack(list, i, math.min(i + 999, #list)))
  end
end
local function hmget_all(key, fields)
  local out = {}
  for i = 1, #fields, 1000 do
    local got = redis.call('HMGET', key, unpack(fields, i, math.min(i + 999, #fields)))
    for j = 1, #got do out[i + j - 1] = got[j] end
  end
  return out
end
-- An integer as text, without the float formatting of tostring and `..`.
local function itoa(n)
  return string.format('%d', n)
end
-- s: a seq as text (see status_bucket_name in scripts.rs).
local function bucket(sp, s)
  return sp .. string.sub(s, 1, -2)
end
-- Collects status fields (`<seq><suffix>` = t) per bucket for write_notes.
local function note(notes, sp, s, suffix, t)
  local k = bucket(sp, s)
  local b = notes[k]
  if not b then
    b = {}
    notes[k] = b
  end
  b[#b + 1] = s .. suffix
  b[#b + 1] = t
end
local function write_notes(notes)
  for k, b in pairs(notes) do each_chunk('HSET', k, b) end
end
-- The pending messages of h in (lo, hi], ascending: their seqs (as text)
-- and their packed `e<seq>` values. n (the pending count) bounds the holes
-- worth probing one by one; a wider range is found from the hash's field names.
local function pending_in(h, lo, hi, n)
  local seqs, fields = {}, {}
  if hi <= lo then return seqs, {} end
  if hi - lo <= 2 * n + 64 then
    local names = {}
    for s = lo + 1, hi do
      local name = itoa(s)
      names[#names + 1] = name
      fields[#fields + 1] = 'e' .. name
    end
    local got, vals = hmget_all(h, fields), {}
    for i = 1, #fields do
      if got[i] then
        seqs[#seqs + 1] = names[i]
        vals[#vals + 1] = got[i]
      end
    end
    return seqs, vals
  end
  local found = {}
  for _, f in ipairs(redis.call('HKEYS', h)) do
    local s = tonumber(string.match(f, '^e(%d+)$'))
    if s and s > lo and s <= hi then found[#found + 1] = s end
  end
  table.sort(found)
  for i, s in ipairs(found) do
    seqs[i] = itoa(s)
    fields[i] = 'e' .. seqs[i]
  end
  return seqs, hmget_all(h, fields)
end
-- Keeps the seqs of messages that just expired for the next EXPIRE_DUE scan
-- (`x`, space-separated, `xn` of them), if the client's expiries are reported
-- (`t`, set by an enqueue that asked). At most LOG_MAX wait; more are counted
-- in `xd` and reported as lost.
local function log_expired(h, seqs)
  local got = redis.call('HMGET', h, 't', 'x', 'xn', 'xd')
  if not got[1] then return end
  local n = tonumber(got[3] or '0')
  local take = math.min(#seqs, math.max(LOG_MAX - n, 0))
  local fields = {}
  if take > 0 then
    local joined = table.concat(seqs, ' ', 1, take)
    if got[2] and got[2] ~= '' then joined = got[2] .. ' ' .. joined end
    fields = {'x', joined, 'xn', itoa(n + take)}
  end
  if take < #seqs then
    fields[#fields + 1] = 'xd'
    fields[#fields + 1] = itoa(tonumber(got[4] or '0') + #seqs - take)
  end
  redis.call('HSET', h, unpack(fields))
end
-- Expires the due messages of h (counters c) and counts them in c. Its
-- `next_expiry` is never later than the earliest expiry of a pending
-- message (acks can leave it earlier), so while it is in the future nothing
-- is due and this costs nothing; else the (capped) queue's expiries are
-- read. Returns whether the counters changed.
local function tidy(h, c, now)
  if c.next_expiry > now then return false end
  local seqs, vals = pending_in(h, c.low, c.seq, c.pending)
  local gone, freed, earliest, notes, expired = {}, 0, NO_EXPIRY, {}, {}
  local sp = status_prefix(h)
  for i, s in ipairs(seqs) do
    local e, z = struct.unpack(EXPIRY_SIZE, vals[i])
    if e <= now then
      gone[#gone + 1] = 'r' .. s
      gone[#gone + 1] = 'e' .. s
      freed = freed + z
      expired[#expired + 1] = s
      note(notes, sp, s, 'x', itoa(now))
    elseif e < earliest then
      earliest = e
    end
  end
  if #gone > 0 then
    each_chunk('HDEL', h, gone)
    write_notes(notes)
    log_expired(h, expired)
  end
  c.pending, c.bytes, c.expired, c.next_expiry = c.pending - #gone / 2, c.bytes - freed, c.expired + #gone / 2, earliest
  return true
end
