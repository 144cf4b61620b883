-- Upgrading from 0.1 (jiggler_gevent/migrate.py): move members of a sorted set of the
-- 0.1 layout (scheduled, retries, dead) to the per-queue sets migrate.py chose for them,
-- each member removed and added in one atomic step.
-- Single server only: the target sets are in the slots of their queues.
-- KEYS[1] the old sorted set; KEYS[1 + i] the target sorted set of member i.
-- ARGV: triples (old member, member to add, score): an empty member to add means the old
-- member unchanged (a garbage member is replaced by a dead-set entry that keeps its
-- bytes); an empty score means the old member's score.
-- A member no longer in the old set (moved by an earlier run) is skipped, so nothing is
-- ever added twice. Returns one flag per member: 1 moved, 0 skipped.
local moved = {}
for i = 1, #KEYS - 1 do
  moved[i] = 0
  local member = ARGV[3 * i - 2]
  local score = redis.call("ZSCORE", KEYS[1], member)
  if score then
    redis.call("ZREM", KEYS[1], member)
    local value = ARGV[3 * i - 1]
    if value == "" then value = member end
    if ARGV[3 * i] ~= "" then score = ARGV[3 * i] end
    redis.call("ZADD", KEYS[1 + i], score, value)
    moved[i] = 1
  end
end
return moved
