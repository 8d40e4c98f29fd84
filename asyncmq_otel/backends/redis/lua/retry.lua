-- retry.lua: active → delayed until TIME + backoff (→ waiting at the back when backoff is 0).
-- KEYS: meta, job, leases, ready, delayed, signal
-- ARGV: epoch, token, job_id, backoff_ms, error (JSON), prev_attempt ('' for none)
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'STALE', state, owner},
--          {'OK', {id, packed JOB_FIELDS values} of the job} (also on a replay); the job's eligible_at is the due time
local meta, job, leases, ready, delayed, signal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, id, backoff = ARGV[2], ARGV[3], tonumber(ARGV[4])
local early, now = settle_begin(meta, leases, job, ARGV[1], token, id)
if early then
  return early
end
-- the checks passed and settle_begin released the lease; the settle's writes follow
local st = redis.call('HMGET', job, 'retries', 'priority')
-- a retries count that is not an integer is left as found, for the next claim's decode
local retries = int_field(st[1] or '0')
if retries then
  redis.call('HSET', job, 'retries', retries + 1)
end
redis.call('HSET', job, 'settled_token', token, 'token', '', 'owner', '', 'error', ARGV[5])
if ARGV[6] ~= '' then
  redis.call('HSET', job, 'prev_attempt', ARGV[6])
end
if backoff > 0 then
  local due = now + backoff
  redis.call('HSET', job, 'state', 'delayed', 'eligible_at', due, 'delay_until', due)
  redis.call('ZADD', delayed, due, id)
else
  -- a retried job goes to the back of its priority (FIFO within a priority, retries behind)
  local seq = next_seq(meta)
  redis.call('HSET', job, 'state', 'waiting', 'eligible_at', now, 'seq', seq)
  redis.call('ZADD', ready, ready_score(st[2], seq), id)
end
wake(signal, 1)
return {'OK', flat_job(job, id)}
