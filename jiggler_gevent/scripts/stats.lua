-- Add job counts to the totals and the per-day history, each batch at most once.
-- KEYS[1] processed total, KEYS[2] failures total, KEYS[3] processed of the day,
-- KEYS[4] failures of the day, KEYS[5] this process's last applied batch number (all in
-- the global cluster slot; the heartbeat calls this after its MULTI, never inside it).
-- ARGV[1] history TTL (s), ARGV[2] TTL of the batch marker (s), then triples
-- (batch number, processed, failed) in increasing batch order. A batch whose number is
-- not above the marker was applied already (its reply was lost): it is skipped, so a
-- heartbeat sent again after a timeout never counts twice.
-- Returns the last applied batch number.
local last = tonumber(redis.call("GET", KEYS[5]) or "0")
for i = 3, #ARGV, 3 do
  local batch = tonumber(ARGV[i])
  if batch > last then
    local processed, failed = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    if processed > 0 then
      redis.call("INCRBY", KEYS[1], processed)
      redis.call("INCRBY", KEYS[3], processed)
      redis.call("EXPIRE", KEYS[3], ARGV[1])
    end
    if failed > 0 then
      redis.call("INCRBY", KEYS[2], failed)
      redis.call("INCRBY", KEYS[4], failed)
      redis.call("EXPIRE", KEYS[4], ARGV[1])
    end
    last = batch
  end
end
redis.call("SET", KEYS[5], last, "EX", ARGV[2])
return last
