-- dead_letter.lua: move one entry that cannot be processed to the dead-letter
-- stream, with the reason, and acknowledge it, atomically.
-- KEYS[1] the stream it came from (an inbox or a task stream)   KEYS[2] partition dlq
-- ARGV[1] consumer group  ARGV[2] consumer  ARGV[3] entry id  ARGV[4] reason
-- ARGV[5] timestamp ms    ARGV[6] the original entry's fields, as a JSON object
-- ARGV[7] how many times it had been delivered
-- Returns the dlq entry id, or -1 when the entry is no longer ours (nothing written).

local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1, ARGV[2])
if #pending == 0 then
  return -1
end
local id = redis.call('XADD', KEYS[2], '*',
  'reason', ARGV[4], 'source', KEYS[1], 'entry_id', ARGV[3], 'group', ARGV[1],
  'ts', ARGV[5], 'deliveries', ARGV[7], 'fields', ARGV[6])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
return id
