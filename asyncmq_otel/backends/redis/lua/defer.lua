-- defer.lua: active → delayed until its delay_until (a job claimed before it), attempt given back;
-- when delay_until has passed it goes back to waiting at its original place.
-- KEYS: meta, job, leases, ready, delayed, signal
-- ARGV: epoch, token, job_id
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'STALE', state, owner},
--          {'OK', {id, packed JOB_FIELDS values} of the job} (also on a replay)
local meta, job, leases, ready, delayed, signal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, id = ARGV[2], ARGV[3]
local early, now = settle_begin(meta, leases, job, ARGV[1], token, id)
if early then
  return early
end
-- the checks passed and settle_begin released the lease; the settle's writes follow
local st = redis.call('HMGET', job, 'delay_until', 'priority', 'seq', 'attempts')
-- fields that are not integers are left as found, for the next claim's decode to report
local attempts = int_field(st[4])
if attempts then
  redis.call('HSET', job, 'attempts', attempts - 1)
end
redis.call('HSET', job, 'settled_token', token, 'token', '', 'owner', '')
local until_ms = int_field(st[1])
if until_ms and until_ms > now then
  redis.call('HSET', job, 'state', 'delayed', 'eligible_at', until_ms)
  redis.call('ZADD', delayed, until_ms, id)
else
  redis.call('HSET', job, 'state', 'waiting')
  redis.call('ZADD', ready, ready_score(st[2], st[3]), id)
end
wake(signal, 1)
return {'OK', flat_job(job, id)}
