-- cancel.lua: waiting / delayed / blocked → cancelled (it never runs); active → cancel_requested.
-- KEYS: meta, job, ready, delayed, cancelled
-- ARGV: epoch, job_id, keep_cancelled, keep_cancelled_age_ms
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'FINISHED'} (already terminal),
--          {'RUNNING'} (its owner stops it at its next await), {'OK'} (cancelled now)
local meta, job, ready, delayed, cancelled = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
-- a key written over with another type is quarantined (a claim dead-letters it): no state, GONE
local state = read_job(job, 'state')[1]
if not state or state == 'staged' then -- staged: its flow is not committed, nothing to cancel yet
  return {'GONE'}
end
if state == 'active' then
  redis.call('HSET', job, 'cancel_requested', '1')
  return {'RUNNING'}
end
if state == 'waiting' then
  redis.call('ZREM', ready, id)
elseif state == 'delayed' then
  redis.call('ZREM', delayed, id)
elseif state == 'blocked' then
  redis.call('ZREM', base_of(meta) .. 'blocked', id)
else
  return {'FINISHED'}
end
finish(job, id, 'cancelled', now_ms(), base_of(meta), {}, cancelled, tonumber(ARGV[3]), tonumber(ARGV[4]))
return {'OK'}
