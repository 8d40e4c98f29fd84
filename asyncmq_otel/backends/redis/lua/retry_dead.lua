-- retry_dead.lua: DLQ → waiting at the back of its priority, with fresh counters.
-- KEYS: meta, job, ready, signal, dlq, failed, expired
-- ARGV: epoch, job_id
-- Replies: {'EPOCH', current epoch or false}, {'NO'} (not in the DLQ), {'OK'}
local meta, job, ready, signal, dlq = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id = ARGV[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
if not redis.call('ZSCORE', dlq, id) or redis.call('EXISTS', job) == 0 then
  return {'NO'}
end
-- not a hash: quarantined (its error is kept below), so the next claim dead-letters it alone
local st, quarantined = read_job(job, 'priority')
local priority = st[1]
local now = now_ms()
local seq = next_seq(meta)
redis.call('ZREM', dlq, id)
redis.call('ZREM', KEYS[6], id)
redis.call('ZREM', KEYS[7], id)
redis.call('HSET', job, 'state', 'waiting', 'seq', seq, 'eligible_at', now, 'attempts', 0, 'retries', 0,
  'stalls', 0, 'interrupts', 0, 'error', '', 'dlq_reason', '', 'finished_at', '', 'result', '',
  'settled_token', '', 'token', '', 'owner', '')
if quarantined then
  redis.call('HSET', job, 'error', quarantined)
end
redis.call('ZADD', ready, ready_score(priority, seq), id)
wake(signal, 1)
flow_retried(base_of(meta), id, now) -- descendants dead-lettered only for this job: blocked again
return {'OK'}
