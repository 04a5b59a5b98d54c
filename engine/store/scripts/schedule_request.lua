-- schedule_request.lua: queue a trigger or a backfill for the worker that claims the schedule next,
-- and make the schedule due now (a paused one too: requests run while it is paused).
-- KEYS[1] due   KEYS[2] s:<name>   KEYS[3] req:<name> (list of request JSON)   KEYS[4] claims
-- A claimed schedule keeps its score: the claimer's advance sees the queue and makes it due again.
-- ARGV[1] name   ARGV[2] the request JSON   ARGV[3] most requests queued at once
-- -> {'ok', now}; {'missing'}; {'full'}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[2]) == 0 then
  return {'missing'}
end
if redis.call('LLEN', KEYS[3]) >= tonumber(ARGV[3]) then
  return {'full'}
end
redis.call('RPUSH', KEYS[3], ARGV[2])
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if redis.call('HEXISTS', KEYS[4], ARGV[1]) == 0 and (not score or tonumber(score) > now) then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
end
return {'ok', now}
