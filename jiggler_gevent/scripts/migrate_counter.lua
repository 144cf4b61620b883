-- Upgrading from 0.1 (jiggler_gevent/migrate.py): add a counter of the 0.1 layout to its
-- current key and delete it, in one atomic step (so it is never added twice).
-- Single server only: the two keys may be in different cluster slots.
-- KEYS[1] the old counter, KEYS[2] the new counter.
-- The new key keeps its own TTL; when it has none and the old one had one (the per-day
-- history), it gets the old key's remaining TTL.
-- Returns the old value as a string ("" when there was no old key), or {"skip", value}
-- when the old value is not an integer (then nothing changes).
local value = redis.call("GET", KEYS[1])
if not value then return "" end
if not string.match(value, "^%-?%d+$") or #value > 19 then return {"skip", value} end
local ttl = redis.call("PTTL", KEYS[1])
redis.call("INCRBY", KEYS[2], value)
if ttl > 0 and redis.call("PTTL", KEYS[2]) == -1 then
  redis.call("PEXPIRE", KEYS[2], ttl)
end
redis.call("DEL", KEYS[1])
return value
