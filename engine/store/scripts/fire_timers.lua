-- fire_timers.lua: move due timers of one partition into its inbox as commands.
-- ZREM and XADD happen together, so a timer fires once however many workers poll.
-- "Due" is judged by the Redis server's clock, so a worker with a skewed clock
-- cannot fire timers early for everyone.
-- KEYS[1] partition timer set   KEYS[2] partition inbox
-- ARGV[1] the most timers to move in this call
-- A member is four lines: cmd_id, command type, instance id, data JSON.
-- Returns {moved, score of the next timer or -1}.

-- The set is read before anything is removed from it, and removed from last: a ZREM of
-- its last member deletes the key, and on Redis Cluster a script may not touch a key it
-- deleted while its slot migrates ("non local key").

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
-- the due timers are the lowest-scored members, so the next one is ranked right after them
local nxt = redis.call('ZRANGE', KEYS[1], #due, #due, 'WITHSCORES')
for _, member in ipairs(due) do
  local a = string.find(member, '\n', 1, true)
  local b = a and string.find(member, '\n', a + 1, true)
  local c = b and string.find(member, '\n', b + 1, true)
  if c then
    redis.call('XADD', KEYS[2], '*',
      'type', string.sub(member, a + 1, b - 1),
      'id', string.sub(member, b + 1, c - 1),
      'data', string.sub(member, c + 1),
      'cmd_id', string.sub(member, 1, a - 1))
  else
    -- not written by foldflow: surface it as a command the worker dead-letters
    redis.call('XADD', KEYS[2], '*', 'type', 'timer.malformed', 'id', '', 'data', member)
  end
end
for i = 1, #due, 500 do  -- unpack is bounded by Lua's C stack
  redis.call('ZREM', KEYS[1], unpack(due, i, math.min(i + 499, #due)))
end
if #nxt == 0 then
  return {#due, -1}
end
return {#due, tonumber(nxt[2])}
