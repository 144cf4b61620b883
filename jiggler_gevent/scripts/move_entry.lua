-- Move one entry out of a sorted set (retries, scheduled or dead), atomically: the
-- admin API's "retry now" (to a queue) and "kill" (to the dead set).
-- KEYS[1] the sorted set, KEYS[2] the target: a queue list or the dead set, both of ONE
-- queue (its cluster slot); moving to another queue's keys is not one script call.
-- ARGV[1] the member as stored, ARGV[2] the member to write (the same job, maybe with
-- updated fields), ARGV[3] "list" to LPUSH to a queue, else the score for ZADD.
-- Returns 1 when moved, 0 when the member was no longer there (someone else moved it).
if redis.call("ZREM", KEYS[1], ARGV[1]) == 0 then return 0 end
if ARGV[3] == "list" then
  redis.call("LPUSH", KEYS[2], ARGV[2])
else
  redis.call("ZADD", KEYS[2], ARGV[3], ARGV[2])
end
return 1
