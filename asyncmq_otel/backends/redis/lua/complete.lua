-- complete.lua: active → completed with the JSON result, for one job or a batch of the worker's
-- settles coalesced into one call (each job its own fenced transition); then retention of `completed`.
-- KEYS: meta, leases, completed, then job:<id> for each job, in ARGV order
-- ARGV: epoch, max_result_bytes, keep_completed, keep_completed_age_ms, then 4 per job:
--       token, result, want ('1': the reply carries the job, '': it does not), last_span (a job of a
--       flow: its attempt's traceparent, kept for its children's span links; '' for none)
-- Replies: {'EPOCH', current epoch or false}: nothing was written
--          {'BATCH', reply per job}, a job's reply being {'GONE'}, {'STALE', state, owner},
--            {'TOO_LARGE'} or on success (also for
--            a replay: this settle was applied already) {'OK', {id, packed JOB_FIELDS values}}
--            when wanted, else the string 'OK'
local meta, leases, completed = KEYS[1], KEYS[2], KEYS[3]
local bad, marks = epoch_and(meta, ARGV[1], 'child_flags')
if bad then
  return bad
end
-- jobs of a queue older than the `has_children` field: every completion looks for children
local legacy = not marks[1]
local limit = tonumber(ARGV[2])
local base = base_of(meta)
local base_len = #base + 5 -- '<base>job:'
local now = false
local out, done, scores = {'BATCH'}, {}, {}
for i = 1, #KEYS - 3 do
  local job = KEYS[3 + i]
  local token, result, want = ARGV[1 + i * 4], ARGV[2 + i * 4], ARGV[3 + i * 4] == '1'
  local last_span = ARGV[4 + i * 4]
  -- a key that is not a job hash is quarantined alone and answers GONE (see fence in _fence.lua)
  local st = redis.pcall('HMGET', job, 'state', 'token', 'settled_token', 'owner', 'has_children')
  local reply
  if st.err then
    quarantine(job)
    reply = {'GONE'}
  else
    reply = fence_values(st, token)
  end
  if not reply then
    if #result > limit then
      reply = {'TOO_LARGE'}
    else
      -- this job's checks passed; its writes follow
      if not now then
        now = now_ms()
      end
      local id = string.sub(job, base_len)
      redis.call('HSET', job, 'state', 'completed', 'finished_at', now, 'result', result,
        'settled_token', token, 'token', '')
      if last_span ~= '' then
        redis.call('HSET', job, 'last_span', last_span)
      end
      if legacy or st[5] then -- only a parent costs the look-up (+1 command per job otherwise)
        flow_settled(base, id, 'done', now) -- blocked children whose last parent this was: waiting now
      end
      done[#done + 1] = id
      scores[#scores + 1] = now
      scores[#scores + 1] = id
      reply = 'OK'
      if want then
        reply = {'OK', flat_job(job, id)}
      end
    end
  elseif reply[1] == 'REPLAY' then
    reply = 'OK'
    if want then
      reply = {'OK', flat_job(job, string.sub(job, base_len))}
    end
  end
  out[#out + 1] = reply
end
if #done > 0 then
  redis.call('ZREM', leases, unpack(done))
  redis.call('ZADD', completed, unpack(scores))
  trim(completed, tonumber(ARGV[3]), now - tonumber(ARGV[4]), base, 10 * #done, nil)
end
return out
