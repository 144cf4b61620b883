-- Push jobs back to the head (right end) of their queues.
-- KEYS are pairs (queue, in-progress list); ARGV[i] is the payload for pair i.
-- With an in-progress list, a job is pushed back only if it was still reserved
-- there (LREM removed it), so a job is never pushed back twice.
-- Pass the queue key itself as the in-progress key for at-most-once jobs,
-- which are no longer in Redis: they are pushed back unconditionally.
-- Cluster slots: each pair is in its queue's slot. On a single server one call may
-- cover several queues; on a Redis Cluster the fetcher calls this once per queue.
-- Returns the number of jobs pushed back.
local pushed = 0
for i = 1, #ARGV do
  local queue, reserved = KEYS[2 * i - 1], KEYS[2 * i]
  if queue == reserved or redis.call("LREM", reserved, -1, ARGV[i]) > 0 then
    redis.call("RPUSH", queue, ARGV[i])
    pushed = pushed + 1
  end
end
return pushed
