-- complete.lua: active → completed, with the JSON result; then retention of `completed`.
-- KEYS: meta, job, leases, completed
-- ARGV: epoch, token, job_id, result, max_result_bytes, keep_completed, keep_completed_age_ms
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'STALE', state, owner}, {'TOO_LARGE'},
--          {'OK', {id, packed JOB_FIELDS values} of the job} (also when this settle was applied already: a replay)
local meta, job, leases, completed = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local token, id, result = ARGV[2], ARGV[3], ARGV[4]
local bad = epoch_reply(meta, ARGV[1]) or fence(job, token)
if bad then
  if bad[1] == 'REPLAY' then
    return {'OK', flat_job(job, id)}
  end
  return bad
end
if #result > tonumber(ARGV[5]) then
  return {'TOO_LARGE'}
end
-- nothing above wrote; everything below writes
local now = now_ms()
redis.call('ZREM', leases, id)
finish(job, id, 'completed', now, base_of(meta), {'result', result, 'settled_token', token, 'token', ''},
  completed, tonumber(ARGV[6]), tonumber(ARGV[7]))
return {'OK', flat_job(job, id)}
