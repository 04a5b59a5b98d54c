-- schedule_advance.lua: a worker's tick of one claimed schedule is done: write its new state, its
-- runs and the next due score, if and only if it still holds the claim (a schedule changed,
-- paused or deleted meanwhile, or claimed again after the lease, is not moved by a late worker).
-- KEYS[1] due   KEYS[2] claims   KEYS[3] s:<name>   KEYS[4] runs:<name>   KEYS[5] req:<name>
-- ARGV[1] name   ARGV[2] token   ARGV[3] next due ms (-1: leave the due set)   ARGV[4] runs kept
-- ARGV[5] requests handled (LTRIM them off the queue)   ARGV[6] number n of field/value pairs to HSET
-- ARGV[7 .. 6+2n] the pairs   ARGV[7+2n] number m of counter/increment pairs   then the pairs,
-- then the run records (JSON), oldest first
-- -> 1 when written; 0 when the claim was lost (nothing written)

local name = ARGV[1]
if redis.call('HGET', KEYS[2], name) ~= ARGV[2] or redis.call('EXISTS', KEYS[3]) == 0 then
  return 0
end
local i = 7
local n = tonumber(ARGV[6])
for _ = 1, n do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local m = tonumber(ARGV[i])
i = i + 1
for _ = 1, m do
  redis.call('HINCRBY', KEYS[3], ARGV[i], tonumber(ARGV[i + 1]))
  i = i + 2
end
for j = i, #ARGV do
  redis.call('LPUSH', KEYS[4], ARGV[j])
end
if i <= #ARGV then
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[4]) - 1)
end
local handled = tonumber(ARGV[5])
if handled > 0 then
  redis.call('LTRIM', KEYS[5], handled, -1)
end
redis.call('HDEL', KEYS[2], name)
local nxt = tonumber(ARGV[3])
if redis.call('LLEN', KEYS[5]) > 0 then  -- queued while this worker held the claim
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if nxt < 0 or nxt > now then
    nxt = now
  end
end
if nxt >= 0 then
  redis.call('ZADD', KEYS[1], nxt, name)
else
  redis.call('ZREM', KEYS[1], name)
end
return 1
