-- schedule_claim.lua: take the due schedules (score <= now, by the Redis server's clock) for one
-- worker: each one's score moves to now + lease, and its claim token is recorded, so no other
-- worker takes it while the lease runs; a worker killed after claiming leaves it due again then.
-- KEYS[1] due   KEYS[2] claims
-- ARGV[1] most schedules to take   ARGV[2] lease ms   ARGV[3] token prefix (the worker's consumer name)
-- -> {now, name1, token1, name2, token2, ...}

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {now}
for i, name in ipairs(due) do
  local token = ARGV[3] .. ':' .. now .. ':' .. i
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), name)
  redis.call('HSET', KEYS[2], name, token)
  out[#out + 1] = name
  out[#out + 1] = token
end
return out
