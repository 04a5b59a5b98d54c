-- breaker.lua: one service's circuit breaker, shared by every activity worker.
-- KEYS[1] the service's breaker hash: state ('closed' | 'open'), failures,
--         opened_at (ms), trial_until (ms: a half-open trial is running until then)
-- ARGV[1] 'admit' | 'success' | 'failure'   ARGV[2] threshold   ARGV[3] cool-down ms
-- Time is the Redis server's, so workers with skewed clocks agree.
-- admit   -> {1, 0} run; {2, 0} run as the half-open trial; {0, ms} wait this long first
-- success -> {1, 0}: closed again
-- failure -> {1, 0} still closed; {0, cool-down} opened (or re-opened after a failed trial)

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local op, threshold, cooldown = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'

if op == 'admit' then
  if state ~= 'open' then
    return {1, 0}
  end
  local reopen = tonumber(redis.call('HGET', KEYS[1], 'opened_at') or '0') + cooldown
  if now < reopen then
    return {0, reopen - now}
  end
  local trial_until = tonumber(redis.call('HGET', KEYS[1], 'trial_until') or '0')
  if now < trial_until then
    return {0, trial_until - now}
  end
  redis.call('HSET', KEYS[1], 'trial_until', now + cooldown)
  return {2, 0}
elseif op == 'success' then
  if state ~= 'closed' or redis.call('HGET', KEYS[1], 'failures') ~= '0' then
    redis.call('HSET', KEYS[1], 'state', 'closed', 'failures', 0, 'trial_until', 0)
  end
  return {1, 0}
elseif op == 'failure' then
  local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
  if state == 'open' or failures >= threshold then
    redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', now, 'trial_until', 0)
    return {0, cooldown}
  end
  return {1, 0}
end
return redis.error_reply('breaker.lua: unknown op ' .. tostring(op))
