-- Recover the reservations of a worker process that is gone: move every job in its
-- in-progress list of one queue back to the head of the queue, oldest first in line.
-- A job recovered for the second time or more is a suspect: it goes to the queue's
-- quarantine list, whose jobs a worker process runs alone, so that a crash then blames
-- the job that caused it. A job recovered more than ARGV[1] times (a poison pill that
-- kills its process even alone) goes to the dead set, its bytes kept in "raw".
-- Every key is in the queue's cluster slot: KEYS[1] the in-progress list, KEYS[2] the
-- pending list, KEYS[3] the owner's lease in this queue (refreshed by its heartbeat),
-- KEYS[4] the prefix of the per-job recovery counters (<prefix><sha1 of the payload>,
-- each expiring on its own), KEYS[5] the dead set, KEYS[6] the quarantine list.
-- ARGV[1] max recoveries, ARGV[2] now, ARGV[3] TTL of the recovery counts,
-- ARGV[4] dead set size cap, ARGV[5] oldest dead score kept, ARGV[6] the queue's name.
-- The owner's lease is checked here, atomically: a live process is never touched,
-- and when several processes race to recover one list, each job moves once.
-- Returns {moved, buried}, or {-1, 0} when the owner is alive.
if redis.call("EXISTS", KEYS[3]) == 1 then return {-1, 0} end
local limit = tonumber(ARGV[1])
local moved, buried = 0, 0
while true do
  local job = redis.call("LPOP", KEYS[1])  -- newest first; pushed right, the oldest ends first
  if not job then break end
  local counter = KEYS[4] .. redis.sha1hex(job)
  local count = redis.call("INCR", counter)
  redis.call("EXPIRE", counter, ARGV[3])
  if count > limit then
    local ok, decoded = pcall(cjson.decode, job)
    local entry = {
      name = cjson.null, jid = cjson.null, queue = ARGV[6], raw = job,
      error_class = "PoisonPill",
      error_message = "recovered from " .. count - 1 .. " crashed worker processes; " ..
        "it may be what crashes them",
      failed_at = tonumber(ARGV[2]), attempt = count - 1
    }
    if ok and type(decoded) == "table" then
      entry["name"] = decoded["name"] or cjson.null
      entry["jid"] = decoded["jid"] or cjson.null
    end
    redis.call("ZADD", KEYS[5], ARGV[2], cjson.encode(entry))
    redis.call("ZREMRANGEBYSCORE", KEYS[5], "-inf", "(" .. ARGV[5])
    redis.call("ZREMRANGEBYRANK", KEYS[5], 0, -(tonumber(ARGV[4]) + 1))
    redis.call("DEL", counter)
    buried = buried + 1
  elseif count >= 2 then
    redis.call("RPUSH", KEYS[6], job)
    moved = moved + 1
  else
    redis.call("RPUSH", KEYS[2], job)
    moved = moved + 1
  end
end
return {moved, buried}
