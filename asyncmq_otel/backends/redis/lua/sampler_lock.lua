-- sampler_lock.lua: the election lock of the telemetry queue sampler (one sampler per prefix).
-- KEYS: lock
-- ARGV: owner, ttl_ms ('0' releases the lock when owner holds it)
-- Replies: {'OK', 1} when owner holds the lock afterwards, else {'OK', 0}
local lock, owner, ttl = KEYS[1], ARGV[1], ARGV[2]
local holder = redis.call('GET', lock)
if ttl == '0' then
  if holder == owner then
    redis.call('DEL', lock)
  end
  return {'OK', 0}
end
if not holder then
  redis.call('SET', lock, owner, 'PX', ttl)
  return {'OK', 1}
end
if holder == owner then
  redis.call('PEXPIRE', lock, ttl)
  return {'OK', 1}
end
return {'OK', 0}
