-- Move jobs that are due from one queue's scheduled or retry set to its pending list.
-- KEYS[1] the sorted set, KEYS[2] the queue's pending list, KEYS[3] the queue's dead set
-- (all three in the queue's cluster slot).
-- ARGV[1] now (epoch seconds), ARGV[2] batch size, ARGV[3] dead set size cap,
-- ARGV[4] oldest dead entry score kept, ARGV[5] the queue's name.
-- Each job is removed and pushed in one atomic step, its bytes unchanged. A member
-- that is not a JSON object with a string "name" goes to the dead set with a reason
-- (bytes kept as "raw", or hex in "raw_hex" when not plain ASCII).
-- Returns {moved to the queue, sent to the dead set}.
pcall(cjson.decode_max_depth, 1024)  -- as deep as the worker's decoder goes (default 1000)
local due = redis.call("ZRANGEBYSCORE", KEYS[1], "-inf", ARGV[1], "LIMIT", 0, tonumber(ARGV[2]))
local moved, buried = 0, 0
local function runnable(member)
  local ok, job = pcall(cjson.decode, member)
  return ok and type(job) == "table" and type(job["name"]) == "string"
end
for _, member in ipairs(due) do
  if redis.call("ZREM", KEYS[1], member) == 1 then
    if runnable(member) then
      redis.call("LPUSH", KEYS[2], member)
      moved = moved + 1
    else
      local entry = {
        name = cjson.null, queue = ARGV[5], error_class = "PayloadError",
        error_message = "entry of " .. KEYS[1] .. " is not a JSON job object with a name",
        failed_at = tonumber(ARGV[1]),
        jid = redis.sha1hex(member .. ARGV[1]):sub(1, 24)
      }
      if string.find(member, "[^\32-\126]") then
        entry["raw_hex"] = (member:gsub(".", function(c) return string.format("%02x", c:byte()) end))
      else
        entry["raw"] = member
      end
      redis.call("ZADD", KEYS[3], ARGV[1], cjson.encode(entry))
      redis.call("ZREMRANGEBYSCORE", KEYS[3], "-inf", "(" .. ARGV[4])
      redis.call("ZREMRANGEBYRANK", KEYS[3], 0, -(tonumber(ARGV[3]) + 1))
      buried = buried + 1
    end
  end
end
return {moved, buried}
