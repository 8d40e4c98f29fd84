-- schedule_control.lua: remove, pause or resume one schedule.
-- KEYS: meta, schedules (ZSET), schedule:<key> (HASH)
-- ARGV: epoch, 'remove' | 'pause' | 'resume', key, next_due_ms (resume: the first tick after TIME)
-- Replies: {'EPOCH', current epoch or false}, {'GONE'} (no such schedule; nothing written), {'OK'}
local meta, schedules, schedule = KEYS[1], KEYS[2], KEYS[3]
local op, key, next_due = ARGV[2], ARGV[3], ARGV[4]

-- validate everything before the first write
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
if op ~= 'remove' and op ~= 'pause' and op ~= 'resume' then
  return redis.error_reply('ERR schedule_control: unknown operation ' .. tostring(op))
end
if op == 'resume' and not tonumber(next_due) then
  return redis.error_reply('ERR schedule_control: resume needs the next due time')
end
if redis.call('EXISTS', schedule) == 0 then
  return {'GONE'}
end

if op == 'remove' then
  redis.call('DEL', schedule)
  redis.call('ZREM', schedules, key)
elseif op == 'pause' then
  redis.call('HSET', schedule, 'paused', '1')
  redis.call('ZADD', schedules, 'inf', key)
else
  redis.call('HSET', schedule, 'paused', '0', 'next_due', next_due)
  redis.call('ZADD', schedules, next_due, key)
end
return {'OK'}
