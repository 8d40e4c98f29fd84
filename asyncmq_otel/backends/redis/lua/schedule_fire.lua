-- schedule_fire.lua: fire one tick (or the catch-up ticks) of a schedule and store its next due
-- time in the same call. Whichever worker calls first with the stored due time fires; a later
-- caller finds the due time moved on (CHANGED). The job id comes from the schedule key and the due
-- time, so even a replayed or raced call never stores a tick's job twice.
-- KEYS: meta, ready, signal, schedules, schedule:<key>, then job:<id> for each job, in ARGV order
-- ARGV: epoch, max_payload_bytes, key, rev, expected next due ms, new next due ms, call nonce,
--       then 2 per job: payload, '<due_ms>,<priority>,<ttl_ms>' (ttl_ms empty: no TTL)
-- Replies: {'EPOCH', current epoch or false}, {'TOO_LARGE', index, size}, {'GONE'}, {'PAUSED'},
--          {'CHANGED'}, {'NOT_DUE', ms until due}: nothing was written;
--          {'REPLAY', now}: this call was applied already (redis-py re-sent it);
--          {'OK', now, {ids stored}, {ids that existed already}}
local meta, ready, signal, schedules, schedule = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local key, rev, expected, next_due, nonce = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local n = (#ARGV - 7) / 2

-- validate everything before the first write
local bad, counters = check_new_jobs(meta, 8, n)
if bad then
  return bad
end
local st = redis.call('HMGET', schedule, 'rev', 'next_due', 'paused', 'fire_nonce')
if not st[1] then
  return {'GONE'}
end
local now = now_ms()
if st[4] == nonce then
  return {'REPLAY', now}
end
if st[3] == '1' then
  return {'PAUSED'}
end
if st[1] ~= rev or st[2] ~= expected then
  return {'CHANGED'}
end
local latest = tonumber(expected)
local specs = {}
for i = 1, n do
  local due, priority, ttl = string.match(ARGV[7 + i * 2], '^(%d+),(-?%d+),(%d*)$')
  if not due then
    return redis.error_reply('ERR schedule_fire: malformed job spec ' .. tostring(ARGV[7 + i * 2]))
  end
  specs[i] = {tonumber(due), priority, ttl}
  if tonumber(due) > latest then
    latest = tonumber(due)
  end
end
if latest > now then
  return {'NOT_DUE', latest - now}
end

-- nothing above wrote; everything below writes
local base_len = #base_of(meta) + 5 -- '<base>job:'
local seq = tonumber(counters[1] or '0')
local stored, existing, waiting = {}, {}, {}
local last_due, last_id = false, false
for i = 1, n do
  local job = KEYS[5 + i]
  local id = string.sub(job, base_len)
  local due, priority, ttl = specs[i][1], specs[i][2], specs[i][3]
  last_due, last_id = due, id
  if redis.call('EXISTS', job) == 1 then
    existing[#existing + 1] = id
  else
    seq = seq + 1
    local fields = {'payload', ARGV[6 + i * 2], 'state', 'waiting', 'seq', seq, 'nonce', nonce,
      'enqueued_at', now, 'eligible_at', now, 'schedule', key, 'schedule_due', due}
    add_job_options(fields, priority, ttl, now)
    redis.call('HSET', job, unpack(fields))
    waiting[#waiting + 1] = ready_score(priority, seq)
    waiting[#waiting + 1] = id
    stored[#stored + 1] = id
  end
end
if #waiting > 0 then
  redis.call('HSET', meta, 'seq', seq)
  redis.call('ZADD', ready, unpack(waiting))
  wake(signal, #stored)
end
local fields = {'next_due', next_due, 'fire_nonce', nonce}
if last_due then
  fields[#fields + 1] = 'last_due'
  fields[#fields + 1] = last_due
  fields[#fields + 1] = 'last_job'
  fields[#fields + 1] = last_id
  fields[#fields + 1] = 'last_fired'
  fields[#fields + 1] = now
end
redis.call('HSET', schedule, unpack(fields))
redis.call('ZADD', schedules, next_due, key)
return {'OK', now, stored, existing}
