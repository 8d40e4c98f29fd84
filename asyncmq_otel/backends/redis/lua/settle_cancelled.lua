-- settle_cancelled.lua: active → cancelled (the owner stops a job whose cancellation was requested).
-- KEYS: meta, job, leases, cancelled
-- ARGV: epoch, token, job_id, keep_cancelled, keep_cancelled_age_ms
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'STALE', state, owner},
--          {'OK', {id, packed JOB_FIELDS values} of the job} (also on a replay)
local meta, job, leases, cancelled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, id = ARGV[2], ARGV[3]
local early, now = settle_begin(meta, leases, job, ARGV[1], token, id)
if early then
  return early
end
-- the checks passed and settle_begin released the lease; the settle's writes follow
finish(job, id, 'cancelled', now, base_of(meta), {'settled_token', token, 'token', ''}, cancelled,
  tonumber(ARGV[4]), tonumber(ARGV[5]))
return {'OK', flat_job(job, id)}
