-- Take up to ARGV[1] jobs from the first non-empty queues, in KEYS order.
-- ARGV[2] == "1" (at-least-once): KEYS are pairs (queue, in-progress list); each job is
--   moved atomically from the right of its queue to the left of its in-progress list.
-- ARGV[2] == "0" (at-most-once): KEYS are the queues; each job is popped from the right.
-- Returns a flat array {queue_index, payload, queue_index, payload, ...} (1-based index).
local want = tonumber(ARGV[1])
local move = ARGV[2] == "1"
local step = move and 2 or 1
local out = {}
local index = 0
for i = 1, #KEYS, step do
  index = index + 1
  while want > 0 do
    local job
    if move then
      job = redis.call("RPOPLPUSH", KEYS[i], KEYS[i + 1])
    else
      job = redis.call("RPOP", KEYS[i])
    end
    if not job then break end
    out[#out + 1] = index
    out[#out + 1] = job
    want = want - 1
  end
  if want == 0 then break end
end
return out
