-- Upgrading from 0.1 (jiggler_gevent/migrate.py): move one batch of jobs from a list of
-- the 0.1 layout to a list of the current one, in one atomic step.
-- Single server only: the two keys are in different cluster slots (the 0.1 layout never
-- ran on a cluster, and migrate.py refuses a cluster client).
-- KEYS[1] the old list, KEYS[2] the new list. ARGV[1] batch size (at most 5000).
-- Jobs are LPUSHed in and popped from the right, so the head of the line is the right
-- end. The batch is taken from the left of the old list (its newest jobs first) and
-- RPUSHed onto the new list in that order, so that batch after batch the old jobs keep
-- their order and end up to the right of (ahead of) every job already in the new list;
-- the old list's oldest job, moved last, is the first in line. When the new list does
-- not exist, one RENAME moves the whole old list at once (O(1), same order).
-- Each job is in exactly one of the two lists at every moment: a crash between two
-- batches leaves the rest in the old list, and running again moves it.
-- Returns {jobs moved, jobs left in the old list}.
local n = redis.call("LLEN", KEYS[1])
if n == 0 then return {0, 0} end
if redis.call("EXISTS", KEYS[2]) == 0 then
  redis.call("RENAME", KEYS[1], KEYS[2])
  return {n, 0}
end
local jobs = redis.call("LPOP", KEYS[1], tonumber(ARGV[1]))
redis.call("RPUSH", KEYS[2], unpack(jobs))
return {#jobs, n - #jobs}
