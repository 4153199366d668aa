-- RELEASE_ROUTE. KEYS: route; ARGV: value. Deletes the route only while it
-- still holds this connection's value; answers how many keys went (0 or 1).
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
