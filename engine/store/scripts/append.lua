-- append.lua: apply the decisions of one batch for one partition, each atomically and
-- independently of the others (one script call per partition and batch, not per instance:
-- the per-call cost in Redis and in the client is paid once). Every key belongs to the
-- partition (one hash tag), so this runs unchanged on Redis Cluster.
--
-- KEYS[1]  partition feed             KEYS[2]  partition inbox
-- KEYS[3]  partition timer set        KEYS[4]  partition lease
-- KEYS[5..] further keys of the partition named by index below (instance streams, task
--           streams, wait index sets, snapshots, outbox, finished set)
--
-- ARGV[1]  consumer group             ARGV[2]  consumer name
-- ARGV[3]  '1': fenced, the lease KEYS[4] must be held by this consumer (a worker whose
--          lease expired while it stalled can no longer write); '0': not checked
-- ARGV[4]  D: how many decisions follow. Each decision is:
--   k            index of its instance stream in KEYS
--   instance id
--   expected     the instance version the decision was made on (0 = new)
--   last         the id of the stream's last entry the decision was made on ('' = not
--                checked). The version alone cannot tell two histories apart: after Redis
--                lost acknowledged writes (restart without fsync, failover), another append
--                can bring the stream back to the same version with different events.
--   ts           timestamp, ms
--   A, then A inbox entry ids. Each must still be pending for this consumer (a late
--                append from a stalled worker whose entries were reclaimed is refused,
--                never acked on the new owner's behalf).
--   E, then E pairs (event type, data JSON)
--   N, then N ARGV items of ops:
--     'T' k task_id step attempt data   XADD KEYS[k] (task; reply_to = KEYS[2])
--     'L' k task_id step attempt data priority l group
--                                       a task for a priority lane KEYS[k]: SADD the lane to the
--                                       partition's lanes set KEYS[l]; when it is new there, create
--                                       the activity group on it first (a task XADDed to a stream
--                                       without its group would never be delivered); then XADD as
--                                       'T' does, with a 'priority' field
--     'Z' score member                  ZADD KEYS[3]
--     'z' member                        ZREM KEYS[3]
--     'S' k member                      SADD KEYS[k]
--     's' k member                      SREM KEYS[k]
--     'O' k target type id data cmd_id  XADD KEYS[k] (the partition outbox): a command for
--                                       an instance elsewhere, relayed after the fact
--     'P' k state                       HSET KEYS[k] (the instance's snapshot): version, last_id
--                                       (the last event just written) and the folded state
--     'F' k                             ZADD KEYS[k] (the partition's finished set) ts instance id
--     'C' k member                      ZADD KEYS[k] (the partition's catch-up set) ts member: an event
--                                       wait registered here whose catch-up the worker confirms
--                                       after the call (a crash in between leaves it for a sweep)
--
-- The XACKs and removals ('z', 's') of the decisions written are done after the last
-- decision: XACKs first, then one ZREM or SREM per key with all of its members. A removal
-- of a set's last member deletes the key, and on Redis Cluster a script may not touch a
-- key it deleted while its slot is migrating ("non local key": the script would stop half
-- way, nothing rolled back), so each key is touched once after it may have been emptied.
-- Every member names its instance, so doing them last changes no outcome.
--
-- Returns 3 items per decision, in order:
--   1, new version, id of the last entry in the instance stream   written
--   0, current version, id of the last entry                     version or last entry id stale
--                                                                 (nothing written for it)
--   -1, entry id, ''                                              an entry is no longer ours
--                                                                 (nothing written for it)
--   -2, lease holder, ''                                          fenced: the partition's lease
--                                                                 is not ours (nothing written)

local group, consumer = ARGV[1], ARGV[2]
local feed, inbox, timers = KEYS[1], KEYS[2], KEYS[3]
local ndecisions = tonumber(ARGV[4])
local out = {}
local removals = {}  -- key -> members: ZREM for the timer set, SREM for the others
local removal_keys = {}
local acks = {}

local function remove_later(key, member)
  local members = removals[key]
  if members == nil then
    members = {}
    removals[key] = members
    removal_keys[#removal_keys + 1] = key
  end
  members[#members + 1] = member
end

if ARGV[3] == '1' then
  local holder = redis.call('GET', KEYS[4])
  if holder ~= consumer then
    for _ = 1, ndecisions do
      out[#out + 1] = -2
      out[#out + 1] = holder or ''
      out[#out + 1] = ''
    end
    return out
  end
end

local function decide(pos)
  -- Checks first, writes after: a refused decision writes nothing.
  local stream, instance_id = KEYS[tonumber(ARGV[pos])], ARGV[pos + 1]
  local expected, expected_last, ts = tonumber(ARGV[pos + 2]), ARGV[pos + 3], ARGV[pos + 4]
  local nack = tonumber(ARGV[pos + 5])
  local first_ack = pos + 6
  local epos = first_ack + nack
  local nevents = tonumber(ARGV[epos])
  local opos = epos + 1 + 2 * nevents
  local nops = tonumber(ARGV[opos])
  local next_pos = opos + 1 + nops

  for i = 0, nack - 1 do
    local id = ARGV[first_ack + i]
    if #redis.call('XPENDING', inbox, group, id, id, 1, consumer) == 0 then
      return next_pos, -1, id, ''
    end
  end

  local version = 0
  local current_last = ''
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
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
    return next_pos, 0, version, current_last
  end

  local last_id = ''
  local p = epos + 1
  for _ = 1, nevents do
    local etype, data = ARGV[p], ARGV[p + 1]
    p = p + 2
    version = version + 1
    last_id = redis.call('XADD', stream, '*', 'type', etype, 'version', version, 'ts', ts, 'data', data)
    redis.call('XADD', feed, '*', 'type', etype, 'version', version, 'ts', ts, 'data', data, 'id', instance_id)
  end

  p = opos + 1
  while p < next_pos do
    local op = ARGV[p]
    if op == 'T' then
      redis.call('XADD', KEYS[tonumber(ARGV[p + 1])], '*',
        'task_id', ARGV[p + 2], 'id', instance_id, 'step', ARGV[p + 3],
        'attempt', ARGV[p + 4], 'reply_to', inbox, 'data', ARGV[p + 5])
      p = p + 6
    elseif op == 'L' then
      local lane = KEYS[tonumber(ARGV[p + 1])]
      if redis.call('SADD', KEYS[tonumber(ARGV[p + 7])], lane) == 1 then
        redis.pcall('XGROUP', 'CREATE', lane, ARGV[p + 8], '0', 'MKSTREAM')  -- BUSYGROUP: it exists
      end
      redis.call('XADD', lane, '*',
        'task_id', ARGV[p + 2], 'id', instance_id, 'step', ARGV[p + 3],
        'attempt', ARGV[p + 4], 'reply_to', inbox, 'data', ARGV[p + 5], 'priority', ARGV[p + 6])
      p = p + 9
    elseif op == 'Z' then
      redis.call('ZADD', timers, ARGV[p + 1], ARGV[p + 2])
      p = p + 3
    elseif op == 'z' then
      remove_later(timers, ARGV[p + 1])
      p = p + 2
    elseif op == 'S' then
      redis.call('SADD', KEYS[tonumber(ARGV[p + 1])], ARGV[p + 2])
      p = p + 3
    elseif op == 's' then
      remove_later(KEYS[tonumber(ARGV[p + 1])], ARGV[p + 2])
      p = p + 3
    elseif op == 'P' then
      redis.call('HSET', KEYS[tonumber(ARGV[p + 1])], 'version', version, 'last_id', last_id, 'state', ARGV[p + 2])
      p = p + 3
    elseif op == 'F' then
      redis.call('ZADD', KEYS[tonumber(ARGV[p + 1])], ts, instance_id)
      p = p + 2
    elseif op == 'C' then
      redis.call('ZADD', KEYS[tonumber(ARGV[p + 1])], ts, ARGV[p + 2])
      p = p + 3
    elseif op == 'O' then
      redis.call('XADD', KEYS[tonumber(ARGV[p + 1])], '*', 'target', ARGV[p + 2], 'type', ARGV[p + 3],
        'id', ARGV[p + 4], 'data', ARGV[p + 5], 'cmd_id', ARGV[p + 6])
      p = p + 7
    else
      return redis.error_reply('append.lua: unknown op ' .. tostring(op))
    end
  end

  for i = 0, nack - 1 do
    acks[#acks + 1] = ARGV[first_ack + i]
  end
  return next_pos, 1, version, last_id
end

local pos = 5
for _ = 1, ndecisions do
  local next_pos, status, a, b = decide(pos)
  if type(next_pos) == 'table' then
    return next_pos  -- an error reply
  end
  out[#out + 1] = status
  out[#out + 1] = a
  out[#out + 1] = b
  pos = next_pos
end
for i = 1, #acks, 500 do  -- unpack is bounded by Lua's C stack: ack in chunks (XACK deletes nothing)
  redis.call('XACK', inbox, group, unpack(acks, i, math.min(i + 499, #acks)))
end
for _, key in ipairs(removal_keys) do
  -- one command per key: a batch holds at most a few members per decision, far below
  -- what unpack takes (about 8,000)
  redis.call(key == timers and 'ZREM' or 'SREM', key, unpack(removals[key]))
end
return out
