-- lease.lua: acquire, renew or release one partition's lease.
-- The lease says which engine worker may append to the partition's instances
-- (append.lua checks it), so commands of one instance are decided in inbox order
-- by one worker at a time.
-- KEYS[1] the partition's lease key
-- ARGV[1] 'acquire' | 'renew' | 'release'   ARGV[2] holder (consumer name)   ARGV[3] ttl ms
-- Returns 1 when the holder has (or had, for release) the lease, 0 otherwise.

local op, holder, ttl = ARGV[1], ARGV[2], ARGV[3]
local current = redis.call('GET', KEYS[1])
if op == 'acquire' then
  if not current then
    redis.call('SET', KEYS[1], holder, 'PX', ttl)
    return 1
  end
  if current == holder then
    redis.call('PEXPIRE', KEYS[1], ttl)
    return 1
  end
  return 0
elseif op == 'renew' then
  if current == holder then
    redis.call('PEXPIRE', KEYS[1], ttl)
    return 1
  end
  return 0
elseif op == 'release' then
  if current == holder then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
return redis.error_reply('lease.lua: unknown op ' .. tostring(op))
