-- limits.lua: one service's cluster-wide limits, shared by every activity worker
-- (engine/store/limits.py; the limits themselves come in ARGV from the caller's cache).
-- KEYS[1] in-flight permits: zset task id -> lease expiry (ms)
-- KEYS[2] token bucket: hash tokens (a float), at (ms of the last refill)
-- KEYS[3] waiting tasks: hash task id -> "reason\nsince ms\nseen ms\ninfo JSON"
-- Time is the Redis server's (TIME), so workers with skewed clocks agree.
-- ARGV[1] op, then:
-- acquire [2] task id [3] in-flight limit (0: none) [4] lease ms [5] rate limit (0: none) [6] per ms
--         [7] poll ms (how soon to ask again for a permit) [8] info (JSON kept with a waiting entry)
--   -> {1, 0, ''} granted: a permit is held until now + lease (a task id that holds one is granted
--      again, so a redelivered task re-uses its permit and takes no second token);
--      {0, ms, 'in_flight'} or {0, ms, 'rate'}: not now, ask again in ms; the task is recorded as waiting
-- renew   [2] task id [3] lease ms -> 1 (the permit is held until now + lease, re-added if it lapsed)
-- release [2] task id -> 1 (its permit and its waiting entry are gone)
-- unwait  [2] task id -> 1 (its waiting entry is gone: it stops waiting without running)
-- usage   [2] rate limit (0: none) [3] per ms [4] stale ms
--   -> {permits held, tokens * 1000, waiting for a permit, waiting for a token, now}
--   drops expired permits and waiting entries not seen for stale ms (their worker died)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op = ARGV[1]

-- the bucket's tokens now (refilled continuously at limit per `per` ms, at most `limit`)
local function tokens_now(limit, per)
  local b = redis.call('HMGET', KEYS[2], 'tokens', 'at')
  local tokens, at = tonumber(b[1]), tonumber(b[2])
  if tokens == nil or at == nil then
    return limit
  end
  if now > at then
    tokens = tokens + (now - at) * limit / per
  end
  return math.min(limit, tokens)
end

local function wait(task_id, reason, ms, info)
  local since = now
  local old = redis.call('HGET', KEYS[3], task_id)
  if old then
    local a = string.find(old, '\n', 1, true)
    local b = a and string.find(old, '\n', a + 1, true)
    if b and string.sub(old, 1, a - 1) == reason then
      since = tonumber(string.sub(old, a + 1, b - 1)) or now
    end
  end
  redis.call('HSET', KEYS[3], task_id, reason .. '\n' .. since .. '\n' .. now .. '\n' .. info)
  return {0, math.max(1, math.ceil(ms)), reason}
end

if op == 'acquire' then
  local task_id, n, lease = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
  local limit, per, poll = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  if n > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
    if redis.call('ZSCORE', KEYS[1], task_id) then
      redis.call('ZADD', KEYS[1], now + lease, task_id)
      redis.call('HDEL', KEYS[3], task_id)
      return {1, 0, ''}
    end
    if redis.call('ZCARD', KEYS[1]) >= n then
      return wait(task_id, 'in_flight', poll, ARGV[8])
    end
  end
  if limit > 0 then
    local tokens = tokens_now(limit, per)
    if tokens < 1 then
      redis.call('HSET', KEYS[2], 'tokens', tostring(tokens), 'at', now)
      return wait(task_id, 'rate', (1 - tokens) * per / limit, ARGV[8])
    end
    redis.call('HSET', KEYS[2], 'tokens', tostring(tokens - 1), 'at', now)
  end
  if n > 0 then
    redis.call('ZADD', KEYS[1], now + lease, task_id)
  end
  redis.call('HDEL', KEYS[3], task_id)
  return {1, 0, ''}
elseif op == 'renew' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
  return 1
elseif op == 'release' then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 1
elseif op == 'unwait' then
  redis.call('HDEL', KEYS[3], ARGV[2])
  return 1
elseif op == 'usage' then
  local limit, per, stale = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
  local held = redis.call('ZCARD', KEYS[1])
  local tokens = -1
  if limit > 0 then
    tokens = math.floor(tokens_now(limit, per) * 1000)
  end
  local counts = {in_flight = 0, rate = 0}
  local all = redis.call('HGETALL', KEYS[3])
  for i = 1, #all, 2 do
    local v = all[i + 1]
    local a = string.find(v, '\n', 1, true)
    local b = a and string.find(v, '\n', a + 1, true)
    local c = b and string.find(v, '\n', b + 1, true)
    local seen = c and tonumber(string.sub(v, b + 1, c - 1))
    if seen == nil or seen < now - stale then
      redis.call('HDEL', KEYS[3], all[i])
    else
      local reason = string.sub(v, 1, a - 1)
      counts[reason] = (counts[reason] or 0) + 1
    end
  end
  return {held, tokens, counts.in_flight, counts.rate, now}
end
return redis.error_reply('limits.lua: unknown op ' .. tostring(op))
