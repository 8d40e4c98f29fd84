-- workers.lua: the registry of live workers (a ZSET of heartbeat deadlines and a HASH of info), plus
-- one ZSET of deadlines per consumed queue, so counting a queue's live consumers is a prune and a ZCARD.
-- KEYS: workers (ZSET), workers_info (HASH), then the consumers ZSET of each queue involved
-- ARGV: 'beat', worker_id, ttl_ms, info JSON (stored as '<now>|<info JSON>'); 'drop', worker_id;
--       'count'; or 'list'
-- Replies: {'OK', now} for beat and drop; {'OK', now, {live consumers per KEYS[3..]}} for count;
--          {'OK', now, {'<heartbeat ms>|<info JSON>' per live worker}} for list
-- 'beat' and 'count' prune the per-queue entries past their deadline (an emptied set is removed);
-- 'list' prunes at most 100 registrations. Only list, hash and sorted-set commands: the documented
-- least-privilege ACL user runs it.
local index, info = KEYS[1], KEYS[2]
local op = ARGV[1]
local now = now_ms()
if op == 'beat' then
  local deadline = now + tonumber(ARGV[3])
  redis.call('ZADD', index, deadline, ARGV[2])
  redis.call('HSET', info, ARGV[2], string.format('%d', now) .. '|' .. ARGV[4])
  for i = 3, #KEYS do
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    redis.call('ZADD', KEYS[i], deadline, ARGV[2])
  end
  return {'OK', now}
end
if op == 'drop' then
  redis.call('ZREM', index, ARGV[2])
  redis.call('HDEL', info, ARGV[2])
  for i = 3, #KEYS do
    redis.call('ZREM', KEYS[i], ARGV[2])
  end
  return {'OK', now}
end
if op == 'count' then
  local counts = {}
  for i = 3, #KEYS do
    -- Pruning here too means a queue nobody consumes any more ends with its set removed.
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now)
    counts[#counts + 1] = redis.call('ZCARD', KEYS[i])
  end
  return {'OK', now, counts}
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
