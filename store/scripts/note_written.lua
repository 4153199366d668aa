-- NOTE_WRITTEN. KEYS: h; ARGV: seq. Raises the written high-water mark `w`
-- of a queue that exists (a missing one has nothing a resume could remove).
local w = redis.call('HMGET', KEYS[1], 'm', 'w')
if w[1] and tonumber(ARGV[1]) > tonumber(w[2] or '0') then redis.call('HSET', KEYS[1], 'w', ARGV[1]) end
return 0
