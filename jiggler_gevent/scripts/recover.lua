-- Recover the reservations of a worker process that is gone: move every job in its
-- in-progress list back to the head of its queue, oldest first in line. A job recovered
-- for the second time or more is a suspect: it goes to the queue's quarantine list
-- (KEYS[8]), whose jobs a worker process runs alone, so that a crash then blames the
-- job that caused it. A job recovered more than ARGV[1] times (a poison pill that kills
-- its process even alone) goes to the dead set, its bytes kept in "raw".
-- KEYS[1] the in-progress list, KEYS[2] its queue, KEYS[3] the owner's heartbeat hash,
-- KEYS[4] the reservations hash, KEYS[5] the prefix of the per-job recovery counters
-- (<prefix><sha1 of the payload>, each expiring on its own), KEYS[6] the dead set,
-- KEYS[7] the process registry, KEYS[8] the queue's quarantine list.
-- ARGV[1] max recoveries, ARGV[2] now, ARGV[3] the owner's identity, ARGV[4] TTL of the
-- recovery counts, ARGV[5] dead set size cap, ARGV[6] oldest dead score kept.
-- The owner's heartbeat is checked here, atomically: a live process is never touched,
-- and when several processes race to recover one list, each job moves once.
-- Returns {moved, buried}, or {-1, 0} when the owner is alive.
if redis.call("EXISTS", KEYS[3]) == 1 then return {-1, 0} end
local limit = tonumber(ARGV[1])
local moved, buried = 0, 0
while true do
  local job = redis.call("LPOP", KEYS[1])  -- newest first; pushed right, the oldest ends first
  if not job then break end
  local counter = KEYS[5] .. redis.sha1hex(job)
  local count = redis.call("INCR", counter)
  redis.call("EXPIRE", counter, ARGV[4])
  if count > limit then
    local ok, decoded = pcall(cjson.decode, job)
    local entry = {
      name = cjson.null, jid = cjson.null, queue = cjson.null, raw = job,
      error_class = "PoisonPill",
      error_message = "recovered from " .. count - 1 .. " crashed worker processes; " ..
        "it may be what crashes them",
      failed_at = tonumber(ARGV[2]), attempt = count - 1
    }
    if ok and type(decoded) == "table" then
      entry["name"] = decoded["name"] or cjson.null
      entry["jid"] = decoded["jid"] or cjson.null
      entry["queue"] = decoded["queue"] or cjson.null
    end
    redis.call("ZADD", KEYS[6], ARGV[2], cjson.encode(entry))
    redis.call("ZREMRANGEBYSCORE", KEYS[6], "-inf", "(" .. ARGV[6])
    redis.call("ZREMRANGEBYRANK", KEYS[6], 0, -(tonumber(ARGV[5]) + 1))
    redis.call("DEL", counter)
    buried = buried + 1
  elseif count >= 2 then
    redis.call("RPUSH", KEYS[8], job)
    moved = moved + 1
  else
    redis.call("RPUSH", KEYS[2], job)
    moved = moved + 1
  end
end
redis.call("HDEL", KEYS[4], KEYS[1])
redis.call("ZREM", KEYS[7], ARGV[3])
return {moved, buried}
