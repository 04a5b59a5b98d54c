-- schedule_delete.lua: remove one schedule, its runs and its pending requests.
-- KEYS[1] names   KEYS[2] due   KEYS[3] claims   KEYS[4] s:<name>   KEYS[5] runs:<name>   KEYS[6] req:<name>
-- ARGV[1] name
-- -> 1 when it existed, else 0

local existed = redis.call('DEL', KEYS[4])
redis.call('DEL', KEYS[5], KEYS[6])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('SREM', KEYS[1], ARGV[1])
return existed
