-- touch_task.lua: a task that waits for its service's limits (engine/workers/limits.py) is
-- still this worker's: reset its idle time so no worker's XAUTOCLAIM takes it as abandoned.
-- Only while this consumer holds it: one another worker has claimed is left alone.
-- KEYS[1] the task stream   ARGV[1] group   ARGV[2] consumer   ARGV[3] entry id
-- Returns 1 touched, 0 not this consumer's any more (it must not run here).
local held = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #held == 0 then
  return 0
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
return 1
