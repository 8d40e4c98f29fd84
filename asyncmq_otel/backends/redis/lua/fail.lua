-- fail.lua: active → failed (expired for reason 'expired'), indexed in the DLQ with its reason.
-- KEYS: meta, job, leases, dlq, failed, expired
-- ARGV: epoch, token, job_id, reason, error (JSON, or '' to keep the stored one),
--       keep_failed, keep_failed_age_ms
-- Replies: {'EPOCH', current epoch or false}, {'BAD_REASON'}, {'GONE'}, {'STALE', state, owner},
--          {'OK', {id, packed JOB_FIELDS values} of the job} (also on a replay)
local meta, job, leases, dlq, failed, expired = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local token, id, reason = ARGV[2], ARGV[3], ARGV[4]
local REASONS = {failed = true, expired = true, worker_lost = true, interrupted = true,
  unknown_task = true, malformed_payload = true}
if not REASONS[reason] then
  return {'BAD_REASON'}
end
local early, now = settle_begin(meta, leases, job, ARGV[1], token, id)
if early then
  return early
end
-- the checks passed and settle_begin released the lease; the settle's writes follow
local fields = {'settled_token', token, 'token', '', 'dlq_reason', reason}
if ARGV[5] ~= '' then
  fields[#fields + 1] = 'error'
  fields[#fields + 1] = ARGV[5]
end
local state, index = 'failed', failed
if reason == 'expired' then
  state, index = 'expired', expired
end
finish(job, id, state, now, base_of(meta), fields, index, tonumber(ARGV[6]), tonumber(ARGV[7]), dlq, failed, expired)
return {'OK', flat_job(job, id)}
