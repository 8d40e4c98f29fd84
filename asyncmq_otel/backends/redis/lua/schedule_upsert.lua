-- schedule_upsert.lua: store a schedule's definition unless the same revision is stored, so
-- deploying the same code twice changes nothing. A redefinition keeps the paused flag and the last
-- run; its ticks restart from the anchor the client computed from TIME.
-- KEYS: meta, schedules (ZSET key -> next due ms, 'inf' while paused), schedule:<key> (HASH)
-- ARGV: epoch, key, rev, definition (JSON), anchor_ms, next_due_ms
-- Replies: {'EPOCH', current epoch or false}, {'SAME'} (nothing written), {'OK'}
local meta, schedules, schedule = KEYS[1], KEYS[2], KEYS[3]
local key, rev, anchor, next_due = ARGV[2], ARGV[3], ARGV[5], ARGV[6]

-- validate everything before the first write
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
if not tonumber(anchor) or not tonumber(next_due) then
  return redis.error_reply('ERR schedule_upsert: anchor and next due must be integers')
end
local current = redis.call('HMGET', schedule, 'rev', 'paused')
if current[1] == rev then
  return {'SAME'}
end

redis.call('HSET', schedule, 'spec', ARGV[4], 'rev', rev, 'anchor', anchor, 'next_due', next_due)
if current[2] == '1' then
  redis.call('ZADD', schedules, 'inf', key)
else
  redis.call('ZADD', schedules, next_due, key)
end
return {'OK'}
