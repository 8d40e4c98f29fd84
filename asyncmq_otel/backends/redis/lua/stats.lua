#!lua flags=no-writes
-- stats.lua: the queue sampler's read, O(1) and O(log N) only (no scan of jobs).
-- KEYS: meta, ready, delayed, leases, dlq
-- ARGV: none
-- Replies: {'OK', now, ready, delayed, active, dead, paused (0 or 1), eligible_at of the head of
--          the ready order or -1}
local meta, ready = KEYS[1], KEYS[2]
local head = redis.call('ZRANGE', ready, 0, 0)
local eligible = -1
if head[1] then
  -- pcall and int_field: a head job key of the wrong type or a bad time must not break the sampler
  local found = redis.pcall('HGET', base_of(meta) .. 'job:' .. head[1], 'eligible_at')
  eligible = type(found) == 'string' and int_field(found) or -1
end
local paused = 0
if redis.call('HGET', meta, 'paused') == '1' then
  paused = 1
end
return {'OK', now_ms(), redis.call('ZCARD', ready), redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]), paused, eligible}
