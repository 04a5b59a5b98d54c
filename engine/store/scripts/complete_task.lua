-- complete_task.lua: report a task's result to the engine and retire the task,
-- atomically: the result command exists if and only if the task is acknowledged.
-- KEYS[1] task stream   KEYS[2] the task's reply_to inbox (same partition)
-- ARGV[1] consumer group  ARGV[2] consumer  ARGV[3] task entry id
-- ARGV[4] command type ('' = acknowledge only, for tasks that answer nothing)
-- ARGV[5] instance id  ARGV[6] data JSON  ARGV[7] cmd_id
-- Returns the inbox entry id ('' when acknowledging only), or -1 when the task is
-- no longer ours: it was reclaimed by another worker (this one stalled), and the
-- late result is dropped.

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then
  return -1
end
local id = ''
if ARGV[4] ~= '' then
  id = redis.call('XADD', KEYS[2], '*', 'type', ARGV[4], 'id', ARGV[5], 'data', ARGV[6], 'cmd_id', ARGV[7])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
return id
