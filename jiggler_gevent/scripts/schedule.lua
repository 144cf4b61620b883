-- Move jobs that are due from a sorted set (scheduled or retries) to their queues.
-- KEYS[1] the sorted set, KEYS[2] the dead set.
-- ARGV[1] now (epoch seconds), ARGV[2] batch size, ARGV[3] queue key prefix,
-- ARGV[4] "1" to prefer the payload's retry_queue over its queue (retries),
-- ARGV[5] dead set size cap, ARGV[6] oldest dead entry score kept.
-- Each job is removed and pushed in one atomic step, its bytes unchanged. A member
-- that is not a JSON object with a string "name" and a valid queue goes to the dead
-- set with a reason (bytes kept as "raw", or hex in "raw_hex" when not plain ASCII).
-- Returns {moved to queues, sent to the dead set}.
pcall(cjson.decode_max_depth, 1024)  -- as deep as the worker's decoder goes (default 1000)
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
local moved, buried = 0, 0
local function valid(name)
  return type(name) == "string" and #name <= 128 and string.match(name, "^[%w_%.%-]+$") ~= nil
end
local function target(member)
  local ok, job = pcall(cjson.decode, member)
  if not ok or type(job) ~= "table" or type(job["name"]) ~= "string" then return nil end
  if ARGV[4] == "1" and job["retry_queue"] ~= nil and job["retry_queue"] ~= cjson.null then
    return job["retry_queue"]
  end
  if job["queue"] == nil then return "default" end
  return job["queue"]
end
for _, member in ipairs(due) do
  if redis.call("ZREM", KEYS[1], member) == 1 then
    local queue = target(member)
    if valid(queue) then
      redis.call("LPUSH", ARGV[3] .. queue, member)
      moved = moved + 1
    else
      local entry = {
        name = cjson.null, queue = cjson.null, error_class = "PayloadError",
        error_message = "entry of " .. KEYS[1] .. " is not a JSON job object with a valid queue",
        failed_at = tonumber(ARGV[1]),
        jid = redis.sha1hex(member .. ARGV[1]):sub(1, 24)
      }
      if string.find(member, "[^\32-\126]") then
        entry["raw_hex"] = (member:gsub(".", function(c) return string.format("%02x", c:byte()) end))
      else
        entry["raw"] = member
      end
      redis.call("ZADD", KEYS[2], ARGV[1], cjson.encode(entry))
      redis.call("ZREMRANGEBYSCORE", KEYS[2], "-inf", "(" .. ARGV[6])
      redis.call("ZREMRANGEBYRANK", KEYS[2], 0, -(tonumber(ARGV[5]) + 1))
      buried = buried + 1
    end
  end
end
return {moved, buried}
