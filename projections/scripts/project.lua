-- project.lua: apply one batch of one projection to one partition, atomically:
-- the read-model writes, each instance's version guard, the acknowledgements
-- and the partition's checkpoint. Every key carries one hash tag.
--
-- KEYS[1]  checkpoint hash (field = projection name, value = highest entry id applied)
-- KEYS[2]  source stream the entries came from (a partition feed, or the events stream)
-- KEYS[3..] keys named by the blocks and ops below (same slot)
--
-- ARGV[1]  consumer group ('' = nothing to acknowledge, no checkpoint: a rebuild)
-- ARGV[2]  projection name NAME: guard field 'v:NAME' of each view hash, checkpoint field
-- ARGV[3]  A: entry ids acknowledged unconditionally follow (events already applied)
-- then     blocks, one per instance, to the end of ARGV:
--            'I' k expected new nargs nacks <nargs op arguments> <nacks entry ids>
--          k: KEYS index of the instance's view hash. expected >= 0: the stored
--          version must equal it (a live batch folded on that version); expected = -1:
--          the stored version must be <= new (a rebuild from the instance stream).
--          When the guard holds the ops run, 'v:NAME' becomes new and the entries are
--          acknowledged; otherwise nothing of the block is written, its entries stay
--          pending, and its number is returned so the caller reloads and folds again.
--          'U' nargs nacks <nargs op arguments> <nacks entry ids>: unguarded, for writes
--          that are idempotent by themselves (ZADD of an external event keyed by its id)
-- ops:     'H' k field value   HSET        'h' k field          HDEL
--          'Z' k score member  ZADD        'z' k member         ZREM
--          'R' k value         RPUSH       'D' k                DEL
--
-- Returns {blocks applied, refused block numbers...}

local group, name = ARGV[1], ARGV[2]
local vfield = 'v:' .. name
local best = nil

local function later(a, b)
  if b == nil then return true end
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, bms = tonumber(ams), tonumber(bms)
  if ams ~= bms then return ams > bms end
  return tonumber(aseq) > tonumber(bseq)
end

local function ack(id)
  redis.call('XACK', KEYS[2], group, id)
  if later(id, best) then best = id end
end

local pos = 3
local nack = tonumber(ARGV[pos])
pos = pos + 1
if group ~= '' then
  for i = 0, nack - 1 do ack(ARGV[pos + i]) end
end
pos = pos + nack

local function run_ops(from, to)
  local i = from
  while i < to do
    local op, k = ARGV[i], KEYS[tonumber(ARGV[i + 1])]
    if op == 'H' then
      redis.call('HSET', k, ARGV[i + 2], ARGV[i + 3]); i = i + 4
    elseif op == 'h' then
      redis.call('HDEL', k, ARGV[i + 2]); i = i + 3
    elseif op == 'Z' then
      redis.call('ZADD', k, ARGV[i + 2], ARGV[i + 3]); i = i + 4
    elseif op == 'z' then
      redis.call('ZREM', k, ARGV[i + 2]); i = i + 3
    elseif op == 'R' then
      redis.call('RPUSH', k, ARGV[i + 2]); i = i + 3
    elseif op == 'D' then
      redis.call('DEL', k); i = i + 2
    else
      return redis.error_reply('project.lua: unknown op ' .. tostring(op))
    end
  end
  return nil
end

local applied, refused = 0, {}
local block, n = 0, #ARGV
while pos <= n and ARGV[pos] == 'U' do
  local nargs, nids = tonumber(ARGV[pos + 1]), tonumber(ARGV[pos + 2])
  local ids_from = pos + 3 + nargs
  local err = run_ops(pos + 3, ids_from)
  if err then return err end
  if group ~= '' then
    for i = ids_from, ids_from + nids - 1 do ack(ARGV[i]) end
  end
  pos = ids_from + nids
end
while pos <= n do
  if ARGV[pos] ~= 'I' then
    return redis.error_reply('project.lua: expected a block at ' .. pos)
  end
  block = block + 1
  local view = KEYS[tonumber(ARGV[pos + 1])]
  local expected, new = tonumber(ARGV[pos + 2]), tonumber(ARGV[pos + 3])
  local nargs, nids = tonumber(ARGV[pos + 4]), tonumber(ARGV[pos + 5])
  local ops_from = pos + 6
  local ids_from = ops_from + nargs
  pos = ids_from + nids
  local stored = tonumber(redis.call('HGET', view, vfield) or '0')
  local ok
  if expected < 0 then ok = stored <= new else ok = stored == expected end
  if ok then
    local err = run_ops(ops_from, ids_from)
    if err then return err end
    redis.call('HSET', view, vfield, new)
    if group ~= '' then
      for i = ids_from, pos - 1 do ack(ARGV[i]) end
    end
    applied = applied + 1
  else
    refused[#refused + 1] = block
  end
end

if best ~= nil then
  local current = redis.call('HGET', KEYS[1], name)
  if not current or later(best, current) then
    redis.call('HSET', KEYS[1], name, best)
  end
end
local out = {applied}
for _, b in ipairs(refused) do out[#out + 1] = b end
return out
