-- workers.lua: the registry of live workers (a ZSET of heartbeat deadlines and a HASH of info).
-- KEYS: workers (ZSET), workers_info (HASH)
-- ARGV: 'beat', worker_id, ttl_ms, info JSON (stored as '<now>|<info JSON>'); 'drop', worker_id; or 'list'
-- Replies: {'OK', now} for beat and drop; {'OK', now, {'<heartbeat ms>|<info JSON>' per live worker}} for list
-- 'list' prunes at most 100 registrations past their deadline per call.
local index, info = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = now_ms()
if op == 'beat' then
  redis.call('ZADD', index, now + tonumber(ARGV[3]), ARGV[2])
  redis.call('HSET', info, ARGV[2], string.format('%d', now) .. '|' .. ARGV[4])
  return {'OK', now}
end
if op == 'drop' then
  redis.call('ZREM', index, ARGV[2])
  redis.call('HDEL', info, ARGV[2])
  return {'OK', now}
end
local gone = redis.call('ZRANGEBYSCORE', index, '-inf', now, 'LIMIT', 0, 100)
if #gone > 0 then
  redis.call('ZREM', index, unpack(gone))
  redis.call('HDEL', info, unpack(gone))
end
local live = redis.call('ZRANGEBYSCORE', index, string.format('(%d', now), '+inf')
if #live == 0 then
  return {'OK', now, {}}
end
local found = redis.call('HMGET', info, unpack(live))
local out = {}
for _, item in ipairs(found) do
  if item then
    out[#out + 1] = item
  end
end
return {'OK', now, out}
