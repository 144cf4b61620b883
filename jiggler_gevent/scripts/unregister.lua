-- After a recovery: forget a dead process's in-progress list and the process itself,
-- unless the process came back meanwhile (its heartbeat hash exists again; its next
-- beats keep both registry entries anyway, and a list it refilled must stay findable).
-- KEYS[1] the owner's heartbeat hash, KEYS[2] the reservations hash, KEYS[3] the process
-- registry (all in the global cluster slot). ARGV[1] the in-progress list key,
-- ARGV[2] the owner's identity.
-- Returns 1 when forgotten, 0 when the owner is back.
if redis.call("EXISTS", KEYS[1]) == 1 then return 0 end
redis.call("HDEL", KEYS[2], ARGV[1])
redis.call("ZREM", KEYS[3], ARGV[2])
return 1
