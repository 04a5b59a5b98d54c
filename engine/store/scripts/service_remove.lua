-- service_remove.lua: remove one service record with its name, checks and check lock.
-- KEYS[1] {ff:svc}:records   KEYS[2] {ff:svc}:names   KEYS[3] {ff:svc}:version
-- KEYS[4] {ff:svc}:checks:<id>   KEYS[5] {ff:svc}:checking:<id>
-- ARGV[1] id   ARGV[2] its name
-- -> 1 removed, 0 there was no such record

local id, name = ARGV[1], ARGV[2]
if redis.call('HDEL', KEYS[1], id) == 0 then
  return 0
end
if redis.call('HGET', KEYS[2], name) == id then
  redis.call('HDEL', KEYS[2], name)
end
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('INCR', KEYS[3])
return 1
