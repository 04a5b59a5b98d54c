-- bridge_monitor.lua: publish the monitoring updates of bridge runs for one batch of one
-- partition feed, move each run's guard and acknowledge the feed entries, atomically, so a
-- bridge killed at any point publishes every change once (streams.md, "Execution plans").
-- KEYS[1] the partition feed   KEYS[2] <prefix>:workflow.monitoring.updates
-- KEYS[3..] the runs' records ({ff:p}:run:<run_id})
-- ARGV[1] consumer group   ARGV[2] n: feed entry ids to acknowledge only, then those n ids
-- then per run block: 'B', record KEYS index, expected guard (mv), new guard, new status
-- ('' keeps it), m messages, the m message JSON texts, k entry ids, the k ids.
-- Returns {published, refused block numbers...}: a refused block (its guard moved: another
-- bridge got there first) writes nothing and acknowledges nothing.

local group = ARGV[1]
local i = 2
local n = tonumber(ARGV[i]); i = i + 1
for _ = 1, n do
  redis.call('XACK', KEYS[1], group, ARGV[i]); i = i + 1
end
local out = {0}
local block = 0
while i <= #ARGV do
  assert(ARGV[i] == 'B', 'bridge_monitor.lua: malformed block')
  block = block + 1
  local record = KEYS[tonumber(ARGV[i + 1])]
  local expected, new, status = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local m = tonumber(ARGV[i + 5])
  local first = i + 6
  local k = tonumber(ARGV[first + m])
  local ids = first + m + 1
  local stored = redis.call('HGET', record, 'mv') or '0'
  if stored ~= expected then
    out[#out + 1] = block
  else
    for j = first, first + m - 1 do
      redis.call('XADD', KEYS[2], '*', 'data', ARGV[j])
    end
    out[1] = out[1] + m
    redis.call('HSET', record, 'mv', new)
    if status ~= '' then
      redis.call('HSET', record, 'status', status)
    end
    for j = ids, ids + k - 1 do
      redis.call('XACK', KEYS[1], group, ARGV[j])
    end
  end
  i = ids + k
end
return out
