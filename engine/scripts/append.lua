-- append.lua: apply one decision for one workflow instance, atomically.
-- Every key belongs to the instance's partition (one hash tag), so this runs
-- unchanged on Redis Cluster.
--
-- KEYS[1]  instance stream            KEYS[2]  partition feed
-- KEYS[3]  partition inbox            KEYS[4]  partition timer set
-- KEYS[5..] further keys of the partition named by the ops (task streams, wait index sets)
--
-- ARGV[1]  consumer group             ARGV[2]  consumer name
-- ARGV[3]  expected version (the instance version the decision was made on; 0 = new)
-- ARGV[4]  instance id                ARGV[5]  timestamp, ms
-- ARGV[6]  '1': fenced, the lease KEYS[5] must be held by this consumer (a worker whose
--          lease expired while it stalled can no longer write); '0': not checked
-- ARGV[7]  the id of the stream's last entry the decision was made on ('' = not checked). The
--          version alone cannot tell two histories apart: after Redis lost acknowledged writes
--          (restart without fsync, failover), another append can bring the stream back to the
--          same version with different events.
-- ARGV[8]  A: how many inbox entry ids follow; ARGV[9 .. 8+A] the ids. Each must still
--          be pending for this consumer (a late append from a stalled worker whose
--          entries were reclaimed is refused, never acked on the new owner's behalf).
-- then     E: how many events follow, then E pairs (event type, data JSON)
-- then     ops, to the end of ARGV:
--            'T' k task_id step attempt data   XADD KEYS[k] (task; reply_to = KEYS[3])
--            'Z' score member                  ZADD KEYS[4]
--            'z' member                        ZREM KEYS[4]
--            'S' k member                      SADD KEYS[k]
--            's' k member                      SREM KEYS[k]
--            'O' k target type id data cmd_id  XADD KEYS[k] (the partition outbox): a command for
--                                              an instance elsewhere, relayed after the fact
--            'P' k state                       HSET KEYS[k] (the instance's snapshot): version, last_id
--                                              (the last event just written) and the folded state
--            'F' k                             ZADD KEYS[k] (the partition's finished set) ts instance id
--
-- Returns {1, new version, id of the last event in the instance stream} when written,
--         {0, current version, id of the last entry}  when the expected version or last entry id
--                               is stale (nothing written),
--         {-1, entry id}        when an entry is no longer ours (nothing written),
--         {-2, lease holder}    when fenced and the partition's lease is not ours.

local group, consumer = ARGV[1], ARGV[2]
local expected = tonumber(ARGV[3])
local instance_id, ts = ARGV[4], ARGV[5]
local expected_last = ARGV[7]
local nack = tonumber(ARGV[8])

if ARGV[6] == '1' then
  local holder = redis.call('GET', KEYS[5])
  if holder ~= consumer then
    return {-2, holder or ''}
  end
end

for i = 1, nack do
  local id = ARGV[8 + i]
  local pending = redis.call('XPENDING', KEYS[3], group, id, id, 1, consumer)
  if #pending == 0 then
    return {-1, id}
  end
end

local version = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local current_last = ''
if #last > 0 then
  current_last = last[1][1]
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'version' then
      version = tonumber(fields[i + 1])
      break
    end
  end
end
if version ~= expected or (expected_last ~= '' and current_last ~= expected_last) then
  return {0, version, current_last}
end

local pos = 9 + nack
local nevents = tonumber(ARGV[pos])
pos = pos + 1
local last_id = ''
for _ = 1, nevents do
  local etype, data = ARGV[pos], ARGV[pos + 1]
  pos = pos + 2
  version = version + 1
  last_id = redis.call('XADD', KEYS[1], '*', 'type', etype, 'version', version, 'ts', ts, 'data', data)
  redis.call('XADD', KEYS[2], '*', 'type', etype, 'version', version, 'ts', ts, 'data', data, 'id', instance_id)
end

local n = #ARGV
while pos <= n do
  local op = ARGV[pos]
  if op == 'T' then
    redis.call('XADD', KEYS[tonumber(ARGV[pos + 1])], '*',
      'task_id', ARGV[pos + 2], 'id', instance_id, 'step', ARGV[pos + 3],
      'attempt', ARGV[pos + 4], 'reply_to', KEYS[3], 'data', ARGV[pos + 5])
    pos = pos + 6
  elseif op == 'Z' then
    redis.call('ZADD', KEYS[4], ARGV[pos + 1], ARGV[pos + 2])
    pos = pos + 3
  elseif op == 'z' then
    redis.call('ZREM', KEYS[4], ARGV[pos + 1])
    pos = pos + 2
  elseif op == 'S' then
    redis.call('SADD', KEYS[tonumber(ARGV[pos + 1])], ARGV[pos + 2])
    pos = pos + 3
  elseif op == 's' then
    redis.call('SREM', KEYS[tonumber(ARGV[pos + 1])], ARGV[pos + 2])
    pos = pos + 3
  elseif op == 'P' then
    redis.call('HSET', KEYS[tonumber(ARGV[pos + 1])], 'version', version, 'last_id', last_id, 'state', ARGV[pos + 2])
    pos = pos + 3
  elseif op == 'F' then
    redis.call('ZADD', KEYS[tonumber(ARGV[pos + 1])], ts, instance_id)
    pos = pos + 2
  elseif op == 'O' then
    redis.call('XADD', KEYS[tonumber(ARGV[pos + 1])], '*', 'target', ARGV[pos + 2], 'type', ARGV[pos + 3],
      'id', ARGV[pos + 4], 'data', ARGV[pos + 5], 'cmd_id', ARGV[pos + 6])
    pos = pos + 7
  else
    return redis.error_reply('append.lua: unknown op ' .. tostring(op))
  end
end

for i = 1, nack do
  redis.call('XACK', KEYS[3], group, ARGV[8 + i])
end
return {1, version, last_id}
