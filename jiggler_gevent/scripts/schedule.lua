-- Move jobs that are due from a sorted set (scheduled or retries) to their queues.
-- KEYS[1] the sorted set, KEYS[2] the dead set.
-- ARGV[1] now (epoch seconds), ARGV[2] batch size, ARGV[3] queue key prefix,
-- ARGV[4] "1" to prefer the payload's retry_queue over its queue (retries).
-- Each job is removed and pushed in one atomic step, its bytes unchanged. A member
-- that is not a JSON object naming a valid queue goes to the dead set with a reason.
-- Returns the number of jobs moved to queues.
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
local moved = 0
local function valid(name)
  return type(name) == "string" and #name <= 128 and string.match(name, "^[%w_%.%-]+$") ~= nil
end
for _, member in ipairs(due) do
  if redis.call("ZREM", KEYS[1], member) == 1 then
    local ok, job = pcall(cjson.decode, member)
    local queue = nil
    if ok and type(job) == "table" then
      if ARGV[4] == "1" and job["retry_queue"] ~= nil then
        queue = job["retry_queue"]
      else
        queue = job["queue"]
        if queue == nil then queue = "default" end
      end
    end
    if valid(queue) then
      redis.call("LPUSH", ARGV[3] .. queue, member)
      moved = moved + 1
    else
      local reason = "scheduled entry is not a JSON object with a valid queue name"
      local entry = cjson.encode({
        raw = member, error_class = "PayloadError", error_message = reason,
        failed_at = tonumber(ARGV[1]), queue = cjson.null, name = cjson.null
      })
      redis.call("ZADD", KEYS[2], ARGV[1], entry)
    end
  end
end
return moved
