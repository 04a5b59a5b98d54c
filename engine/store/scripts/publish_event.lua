-- publish_event.lua: publish an external event that carries its own id, at most once.
-- KEYS[1] the events stream (ff:events)
-- KEYS[2] the id's record ({ff:events}:eid:<id>, the stream's slot)
-- ARGV[1] how long the record is kept (ms)   ARGV[2..] the entry's field/value pairs
-- Returns {entry id, 0} when published now, {the first entry id, 1} for a repeat.
-- The record is written in the call that adds the entry, so two publishers of one id
-- cannot both add it, and the record always names an entry that was added.

local found = redis.call('GET', KEYS[2])
if found then
  return {found, 1}
end
local entry = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('SET', KEYS[2], entry, 'PX', ARGV[1])
return {entry, 0}
