-- reap.lua: recover expired leases, for the holder of the reaper role only.
-- An expired lease's job goes back to waiting at its original place (stalls + 1) while
-- stalls <= max_stalls, else to failed with DLQ reason 'worker_lost' (a lost job is retried or dead-lettered, never dropped).
-- A job key that is not a hash is quarantined and put in ready without a state, and a job whose
-- stalls count is not an integer goes back to waiting as it is: the next claim hands either to a
-- worker, whose decode dead-letters it as malformed_payload (nothing here fails after a write).
-- KEYS: meta, leases, ready, signal, reaper, dlq, failed, expired
-- ARGV: epoch, worker_id, hold_ms, max_stalls, limit, keep_failed, keep_failed_age_ms,
--       sent_at_ms (the caller's estimate of TIME when it sent this call, or ''), max_delay_ms
-- Replies: {'EPOCH', current epoch or false}, {'NOT_REAPER', now}, {'LATE', now},
--          {'OK', more (0 or 1), {{id, packed JOB_FIELDS values} per stalled job}, {{id, packed JOB_FIELDS values} per dead job}, now}
local meta, leases, ready, signal, reaper = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local worker, hold, max_stalls, limit = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local now = now_ms()
-- Outage grace: a call held in transit by an outage arrives when traffic resumes, before the
-- renewals the same outage held up; it must not take their leases, so it revokes nothing.
local sent_at = tonumber(ARGV[8])
if sent_at and now - sent_at > tonumber(ARGV[9]) then
  return {'LATE', now}
end
local holder = redis.call('GET', reaper)
if holder and holder ~= worker then
  return {'NOT_REAPER', now}
end
redis.call('SET', reaper, worker, 'PX', hold)
local base = base_of(meta)
local expired, more = page_upto(leases, now, limit)
local stalled, dead = {}, {}
local malformed = 0
for _, id in ipairs(expired) do
  redis.call('ZREM', leases, id)
  local job = base .. 'job:' .. id
  local st = read_job(job, 'state', 'priority', 'seq', 'stalls') -- another type: quarantined, no state
  if not JOB_STATES[st[1] or ''] and redis.call('EXISTS', job) == 1 then
    -- no known state: into ready as it is, for the next claim to hand over as malformed
    redis.call('ZADD', ready, ready_score(st[2], next_seq(meta)), id)
    malformed = malformed + 1
  elseif st[1] == 'active' then
    local stalls = int_field(st[4] or '0')
    if stalls then -- an unreadable count stays as found (the decode reports it)
      stalls = stalls + 1
      redis.call('HSET', job, 'stalls', stalls)
    end
    redis.call('HSET', job, 'token', '', 'owner', '')
    -- the lost attempt's span never ended, so the redelivery links to no previous attempt
    redis.call('HDEL', job, 'prev_attempt')
    if stalls and stalls > max_stalls then
      finish(job, id, 'failed', now, base, {'dlq_reason', 'worker_lost'}, KEYS[7], tonumber(ARGV[6]),
        tonumber(ARGV[7]), KEYS[6], KEYS[7], KEYS[8])
      dead[#dead + 1] = flat_job(job, id)
    else
      redis.call('HSET', job, 'state', 'waiting', 'eligible_at', now)
      redis.call('ZADD', ready, ready_score(st[2], st[3]), id)
      stalled[#stalled + 1] = flat_job(job, id)
    end
  end
end
wake(signal, #stalled + malformed)
return {'OK', more, stalled, dead, now}
