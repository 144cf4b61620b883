-- Claim one tick of a periodic schedule and push its job, in one atomic step: the
-- first process to arrive pushes, the others find the tick recorded.
-- KEYS[1] the queue's hash schedule name -> last tick, KEYS[2] the queue's pending list
-- (both in the queue's cluster slot).
-- ARGV[1] schedule name, ARGV[2] tick (epoch seconds), ARGV[3] payload.
-- Returns 1 pushed, 0 tick already taken, 2 first sight of the schedule (recorded, not
-- pushed: a schedule starts with the next tick, not with one from the past).
local last = redis.call("HGET", KEYS[1], ARGV[1])
if last and tonumber(last) >= tonumber(ARGV[2]) then
  return 0
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
if not last then
  return 2
end
redis.call("LPUSH", KEYS[2], ARGV[3])
return 1
