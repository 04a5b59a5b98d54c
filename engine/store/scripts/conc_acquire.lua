-- conc_acquire.lua: take a concurrency slot of one (workflow, key), or queue for one.
-- Idempotent per instance id: a redelivered start never takes two slots.
-- KEYS[1] holders (zset: id -> admit ms)   KEYS[2] queue (zset: id -> (9 - priority) * 1e13 + arrival)
-- KEYS[3] arrival counter                  KEYS[4] evicted (hash: newer id -> holder it evicted)
-- ARGV[1] instance id   ARGV[2] limit   ARGV[3] 'queue' | 'cancel_newest' | 'cancel_oldest' | 'try'
-- ARGV[4] now ms        ARGV[5] priority 0-9 (higher is more urgent)
-- Returns {outcome, evicted, granted...}: outcome 'run' (holds a slot), 'queue' (waits) or
-- 'full' (no slot, not queued); evicted: the holder cancel_oldest displaced ('' when none);
-- granted: other queued ids this call moved into free slots (the caller sends them `admit`).

local id, limit, mode, now = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local prio = math.max(0, math.min(9, tonumber(ARGV[5]) or 0))

if redis.call('ZSCORE', KEYS[1], id) then
  -- A repeat (a redelivered start): the slot is fresh again, so the reconciler's grace
  -- period runs from now and it does not free a slot whose start is about to be appended.
  redis.call('ZADD', KEYS[1], now, id)
  return {'run', redis.call('HGET', KEYS[4], id) or ''}
end
if redis.call('ZSCORE', KEYS[2], id) then
  return {'queue', ''}
end

if mode == 'queue' then
  -- Join the queue first, then fill free slots from its head: arrival order (by priority)
  -- holds even when a slot is free while others wait (a release that crashed half way).
  redis.call('ZADD', KEYS[2], (9 - prio) * 1e13 + redis.call('INCR', KEYS[3]), id)
  local reply = {'queue', ''}
  while redis.call('ZCARD', KEYS[1]) < limit do
    local head = redis.call('ZPOPMIN', KEYS[2])
    if #head == 0 then break end
    redis.call('ZADD', KEYS[1], now, head[1])
    if head[1] == id then reply[1] = 'run' else reply[#reply + 1] = head[1] end
  end
  return reply
end

if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, id)
  return {'run', ''}
end
if mode == 'cancel_oldest' then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  redis.call('ZREM', KEYS[1], oldest)
  redis.call('ZADD', KEYS[1], now, id)
  redis.call('HSET', KEYS[4], id, oldest)
  return {'run', oldest}
end
return {'full', ''}
