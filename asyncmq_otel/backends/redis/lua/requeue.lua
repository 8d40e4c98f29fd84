-- requeue.lua: active → waiting at its original place (shutdown), interrupts + 1;
-- past max_interrupts → failed, DLQ 'interrupted'.
-- KEYS: meta, job, leases, ready, signal, dlq, failed, expired
-- ARGV: epoch, token, job_id, max_interrupts, keep_failed, keep_failed_age_ms
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'STALE', state, owner},
--          {'OK', {id, packed JOB_FIELDS values} of the job} (also on a replay)
local meta, job, leases, ready, signal = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local token, id = ARGV[2], ARGV[3]
local early, now = settle_begin(meta, leases, job, ARGV[1], token, id)
if early then
  return early
end
-- the checks passed and settle_begin released the lease; the settle's writes follow
local st = redis.call('HMGET', job, 'priority', 'seq', 'interrupts')
-- an interrupts count that is not an integer is left as found, for the next claim's decode
local interrupts = int_field(st[3] or '0')
if interrupts then
  interrupts = interrupts + 1
  redis.call('HSET', job, 'interrupts', interrupts)
end
redis.call('HSET', job, 'settled_token', token, 'token', '', 'owner', '')
if interrupts and interrupts > tonumber(ARGV[4]) then
  finish(job, id, 'failed', now, base_of(meta), {'dlq_reason', 'interrupted'}, KEYS[7], tonumber(ARGV[5]),
    tonumber(ARGV[6]), KEYS[6], KEYS[7], KEYS[8])
else
  redis.call('HSET', job, 'state', 'waiting', 'eligible_at', now)
  redis.call('ZADD', ready, ready_score(st[1], st[2]), id)
  wake(signal, 1)
end
return {'OK', flat_job(job, id)}
