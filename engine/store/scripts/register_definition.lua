-- register_definition.lua: store one (name, version) of a definition, immutably.
-- KEYS[1] the definition's hash
-- ARGV[1] version  ARGV[2] canonical body JSON  ARGV[3] version sort key  ARGV[4] now (ms)
-- Fields: 'v:<version>' body; 'latest' and 'latest_key' the highest version;
-- 't:<version>' when it was stored; 'created_ms' the first, 'updated_ms' the last change.
-- Returns 1 stored, 0 the same body was already stored, -1 a different body is.

local field = 'v:' .. ARGV[1]
local current = redis.call('HGET', KEYS[1], field)
if current then
  if current == ARGV[2] then
    return 0
  end
  return -1
end
redis.call('HSET', KEYS[1], field, ARGV[2], 't:' .. ARGV[1], ARGV[4], 'updated_ms', ARGV[4])
redis.call('HSETNX', KEYS[1], 'created_ms', ARGV[4])
local latest_key = redis.call('HGET', KEYS[1], 'latest_key')
if (not latest_key) or ARGV[3] > latest_key then
  redis.call('HSET', KEYS[1], 'latest', ARGV[1], 'latest_key', ARGV[3])
end
return 1
