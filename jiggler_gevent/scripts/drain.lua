-- Move every job left in an in-progress list back to the head of its queue,
-- oldest reservation first in line. KEYS[1] the in-progress list, KEYS[2] the queue's
-- pending list (both in the queue's cluster slot).
-- Returns the number of jobs moved.
local moved = 0
while redis.call("LMOVE", KEYS[1], KEYS[2], "LEFT", "RIGHT") do
  moved = moved + 1
end
return moved
