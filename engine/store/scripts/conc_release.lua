-- conc_release.lua: an instance of one (workflow, key) is final: free its slot (or its place in
-- the queue) and move the queue's head into every free slot.
-- KEYS[1] holders   KEYS[2] queue   KEYS[3] evicted   (see conc_acquire.lua)
-- ARGV[1] instance id ('' only fills free slots)   ARGV[2] limit   ARGV[3] now ms
-- ARGV[4] optional: free the slot only if it was (re)taken at or before this ms (the reconciler's
--         check-then-free: a start redelivered meanwhile re-took it, and keeps it)
-- Returns the ids moved into holders, in admission order: the caller sends each an `admit`
-- (a crash before it does is repaired by the reconciler, which finds them holding while queued).

local id, limit, now = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local since = redis.call('ZSCORE', KEYS[1], id ~= '' and id or '-')
if ARGV[4] and since and tonumber(since) > tonumber(ARGV[4]) then
  id = ''
end
if id ~= '' then
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[2], id)
  redis.call('HDEL', KEYS[3], id)
end
local granted = {}
while redis.call('ZCARD', KEYS[1]) < limit do
  local head = redis.call('ZPOPMIN', KEYS[2])
  if #head == 0 then break end
  redis.call('ZADD', KEYS[1], now, head[1])
  granted[#granted + 1] = head[1]
end
return granted
