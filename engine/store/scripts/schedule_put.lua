-- schedule_put.lua: create, replace, pause or unpause one schedule; every key under {<prefix>:sched}.
-- KEYS[1] names (set)   KEYS[2] due (zset: name -> next fire ms)   KEYS[3] claims (hash: name -> token)
-- KEYS[4] s:<name> (hash: def, cursor_ms, ...)
-- ARGV[1] name   ARGV[2] mode: create | replace | pause | unpause   ARGV[3] the definition JSON
-- ARGV[4] '1' when the definition is paused
-- "Now" is the Redis server's clock: the cursor (fire times after it are still to handle) restarts
-- there on create, replace and unpause, so nothing of the time before is started, and the schedule
-- is due at once, so a worker computes its next fire time (cron is not done in Lua).
-- Any claim a worker holds is dropped: its advance is refused and it cannot undo this change.
-- -> {'ok', now}; {'exists'} (create of a taken name); {'missing'} (no such schedule)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local name, mode = ARGV[1], ARGV[2]
local exists = redis.call('EXISTS', KEYS[4]) == 1
if mode == 'create' and exists then
  return {'exists'}
end
if mode ~= 'create' and not exists then
  return {'missing'}
end
redis.call('HSET', KEYS[4], 'def', ARGV[3], 'updated_ms', now)
if mode == 'create' then
  redis.call('HSET', KEYS[4], 'created_ms', now)
end
if mode ~= 'pause' then
  redis.call('HSET', KEYS[4], 'cursor_ms', now)
end
redis.call('SADD', KEYS[1], name)
redis.call('HDEL', KEYS[3], name)
if ARGV[4] == '1' then
  redis.call('ZREM', KEYS[2], name)
else
  redis.call('ZADD', KEYS[2], now, name)
end
return {'ok', now}
