-- Acknowledge finished jobs, then take up to ARGV[1] jobs from the first non-empty
-- queues, in KEYS order: one round trip for both.
-- ARGV[2] == "1" (at-least-once): KEYS are pairs (queue, in-progress list); each job is
--   moved atomically from the right of its queue to the left of its in-progress list.
-- ARGV[2] == "0" (at-most-once): KEYS are the queues; each job is popped from the right.
-- ARGV[3] = n acks, followed by n pairs (queue index, payload): each payload is removed
--   once from that queue's in-progress list, searching from the oldest end.
-- Cluster slots: a queue's pending and in-progress lists share the queue's slot. On a
-- single server one call may span every queue; on a Redis Cluster the fetcher calls
-- this once per queue (KEYS of one queue, only that queue's acks). With ARGV[1] = 0 it
-- only acks.
-- Returns a flat array {queue_index, payload, queue_index, payload, ...} (1-based index).
local want = tonumber(ARGV[1])
local move = ARGV[2] == "1"
local step = move and 2 or 1
local acks = tonumber(ARGV[3] or "0")
for a = 0, acks - 1 do
  local index = tonumber(ARGV[4 + 2 * a])
  redis.call("LREM", KEYS[2 * index], -1, ARGV[5 + 2 * a])
end
local out = {}
local index = 0
for i = 1, #KEYS, step do
  if want <= 0 then break end
  index = index + 1
  while want > 0 do
    local job
    if move then
      job = redis.call("LMOVE", KEYS[i], KEYS[i + 1], "RIGHT", "LEFT")
    else
      job = redis.call("RPOP", KEYS[i])
    end
    if not job then break end
    out[#out + 1] = index
    out[#out + 1] = job
    want = want - 1
  end
end
return out
