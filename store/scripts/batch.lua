-- Runs `op` (defined above) once per caller of this call. The operation reads
-- its caller's keys and arguments at offsets, `KEYS[k + i]` and `ARGV[a + i]`
-- (no table per caller); `i` is the caller's index (0-based), for what a
-- script fetched for all callers at once before `op`. After ARGV[1] and
-- ARGV[2] (keys and arguments per caller) come the callers' keys and
-- arguments in order. The reply holds two items per caller, flat (a table
-- per caller costs ~1 us to turn into a reply): `1, result`, or `0, message`
-- when its operation failed (the others still run: a Redis error inside an
-- array reply would fail the whole call). Errors about the server rather
-- than the data (a demoted master's READONLY, OOM, ...) fail the whole call
-- instead, so that the connection layer sees them and finds the new master:
-- they can only come at a call's first write (a replica refuses every write;
-- Redis lets a script that already wrote go on past maxmemory), so no
-- caller's work was done.
local out = {}
for i = 0, #KEYS / nk - 1 do
  local ok, r = pcall(op, i * nk, 2 + i * na, i)
  if ok then
    out[2 * i + 1] = 1
    out[2 * i + 2] = r
  else
    local e = tostring(type(r) == 'table' and r.err or r)
    for _, code in ipairs({'READONLY', 'OOM', 'MASTERDOWN', 'LOADING', 'NOREPLICAS'}) do
      if string.sub(e, 1, #code) == code then return redis.error_reply(e) end
    end
    out[2 * i + 1] = 0
    out[2 * i + 2] = e
  end
end
return out
