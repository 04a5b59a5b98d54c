-- dlq_replay.lua: put one dead letter's original entry back on its source
-- stream and delete it from the dead-letter stream, atomically. Used only
-- when both keys share a hash tag (a partition dlq and that partition's inbox
-- or task stream); the caller has checked that the source is one of the
-- deployment's streams.
-- KEYS[1] the dlq   KEYS[2] the source stream
-- ARGV[1] the dead letter's id in the dlq   ARGV[2..] field, value, ... of the original entry
-- Returns the new entry's id in the source, or false when the dead letter is
-- no longer there (replayed or dropped meanwhile: nothing written).

if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
