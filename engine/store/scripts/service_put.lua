-- service_put.lua: register or update one service record, its name and the version counter together.
-- KEYS[1] {ff:svc}:records   KEYS[2] {ff:svc}:names   KEYS[3] {ff:svc}:version   KEYS[4] {ff:svc}:checks:<id>
-- ARGV[1] id   ARGV[2] name   ARGV[3] the record JSON
-- ARGV[4] '' to create; else the record JSON the update was made from (compare-and-set)
-- ARGV[5] the name the record had ('' when creating)   ARGV[6..] the record's instance urls
-- -> {'ok', version}; {'taken', id of the service that has the name}; {'missing', ''} (no such id);
--    {'changed', ''} (someone else changed the record since it was read: read again)

local id, name, record, expected, old_name = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local owner = redis.call('HGET', KEYS[2], name)
if owner and owner ~= id then
  return {'taken', owner}
end
local current = redis.call('HGET', KEYS[1], id)
if expected == '' then
  if current then
    return {'taken', id}
  end
else
  if not current then
    return {'missing', ''}
  end
  if current ~= expected then
    return {'changed', ''}
  end
  if old_name ~= name and redis.call('HGET', KEYS[2], old_name) == id then
    redis.call('HDEL', KEYS[2], old_name)
  end
  -- Checks of instances the record no longer has would be read as if they still counted.
  local keep = {}
  for i = 6, #ARGV do
    keep[ARGV[i]] = true
  end
  for _, url in ipairs(redis.call('HKEYS', KEYS[4])) do
    if not keep[url] then
      redis.call('HDEL', KEYS[4], url)
    end
  end
end
redis.call('HSET', KEYS[2], name, id)
redis.call('HSET', KEYS[1], id, record)
return {'ok', tostring(redis.call('INCR', KEYS[3]))}
