-- Keep a record for the database in the bounded buffer, once per entry id (a push the client
-- retried after a lost reply is not kept twice); past the bound, count it as lost (how many,
-- first and last time) instead of dropping the oldest.
--
-- KEYS: the buffer list, the lost-count hash, the set of buffered ids.
-- ARGV: the entry (JSON), the bound, now (ms), the entry's id.
-- Reply: 1 if kept (now or before), 0 if counted as lost.
if redis.call('SISMEMBER', KEYS[3], ARGV[4]) == 1 then
  return 1
end
if redis.call('LLEN', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('RPUSH', KEYS[1], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[4])
  return 1
end
redis.call('HINCRBY', KEYS[2], 'count', 1)
redis.call('HSETNX', KEYS[2], 'first_ms', ARGV[3])
redis.call('HSET', KEYS[2], 'last_ms', ARGV[3])
return 0
