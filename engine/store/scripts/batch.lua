-- batch.lua: one batch's lease and progress (streams.md, "Batch operations").
-- Every key is one batch's, under its hash tag {<prefix>:batch:<id>}, so this runs on Redis Cluster.
-- KEYS[1] record hash  KEYS[2] lease  KEYS[3] items list  KEYS[4] seen set  KEYS[5] failures stream
-- ARGV[1] op  ARGV[2] lease token  ARGV[3] lease ttl ms  ARGV[4] now ms  ARGV[5..] per op:
--   'acquire' / 'release'                         -> 1 when the token holds (held) the lease, else 0
--   'match'  expected match cursor, new match cursor, last page (1|0), ids...
--            appends the ids not matched before; returns {'ok', matched} or {refusal}
--   'apply'  expected cursor, new cursor, done count, failures (n), then n pairs (execution id, reason)
--            returns {'ok', state after} or {refusal}; a cancelled batch still counts the chunk
--            that was in flight (its commands were sent), and stays cancelled
--   'cancel' (no lease) -> {'ok', state after} or {'final', state}
-- A refusal is {'lease'} (another runner holds it), {'state', state} (the batch is no longer
-- in the phase the call is for) or {'cursor', stored cursor} (a stale runner's repeat): the
-- progress moves only under the lease, from the cursor it was read at, so no item counts twice.

local rec, lease, items, seen, failures = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local op, token, ttl, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

if op == 'acquire' then
  local current = redis.call('GET', lease)
  if not current then
    redis.call('SET', lease, token, 'PX', ttl)
    return 1
  end
  if current == token then
    redis.call('PEXPIRE', lease, ttl)
    return 1
  end
  return 0
elseif op == 'release' then
  if redis.call('GET', lease) == token then
    redis.call('DEL', lease)
    return 1
  end
  return 0
end

local state = redis.call('HGET', rec, 'state')
if op == 'cancel' then
  if state ~= 'matching' and state ~= 'running' then
    return {'final', state or ''}
  end
  redis.call('HSET', rec, 'state', 'cancelled', 'updated_ms', now, 'finished_ms', now)
  return {'ok', 'cancelled'}
end

if redis.call('GET', lease) ~= token then
  return {'lease'}
end
redis.call('PEXPIRE', lease, ttl)

if op == 'match' then
  if state ~= 'matching' then
    return {'state', state or ''}
  end
  local stored = redis.call('HGET', rec, 'match_cursor') or ''
  if stored ~= ARGV[5] then
    return {'cursor', stored}
  end
  local added = 0
  for i = 8, #ARGV do
    if redis.call('SADD', seen, ARGV[i]) == 1 then
      redis.call('RPUSH', items, ARGV[i])
      added = added + 1
    end
  end
  local matched = redis.call('HINCRBY', rec, 'matched', added)
  redis.call('HSET', rec, 'match_cursor', ARGV[6], 'updated_ms', now)
  if ARGV[7] == '1' then
    redis.call('HSET', rec, 'state', 'running')
    redis.call('DEL', seen)
  end
  return {'ok', matched}
end

if op == 'apply' then
  -- A chunk in flight when the batch was cancelled is still counted: its commands went out.
  if state ~= 'running' and state ~= 'cancelled' then
    return {'state', state or ''}
  end
  local stored = redis.call('HGET', rec, 'cursor') or '0'
  if stored ~= ARGV[5] then
    return {'cursor', stored}
  end
  local nfail = tonumber(ARGV[8])
  for i = 0, nfail - 1 do
    redis.call('XADD', failures, '*', 'execution_id', ARGV[9 + 2 * i], 'reason', ARGV[10 + 2 * i])
  end
  redis.call('HINCRBY', rec, 'done', tonumber(ARGV[7]))
  redis.call('HINCRBY', rec, 'failed', nfail)
  redis.call('HSET', rec, 'cursor', ARGV[6], 'updated_ms', now)
  local after = state
  if state == 'running' and tonumber(ARGV[6]) >= tonumber(redis.call('HGET', rec, 'matched') or '0') then
    after = 'completed'
    redis.call('HSET', rec, 'state', after, 'finished_ms', now)
  end
  return {'ok', after}
end
return redis.error_reply('batch.lua: unknown op ' .. tostring(op))
