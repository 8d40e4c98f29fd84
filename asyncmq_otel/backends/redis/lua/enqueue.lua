-- enqueue.lua: ∅ → waiting / delayed, for one job or a batch (bulk enqueue is one call per 500 jobs).
-- KEYS: meta, ready, delayed, signal, then job:<id> for each job, in ARGV order
-- ARGV: epoch, max_payload_bytes, then 2 per job: payload, '<delay_ms>,<priority>,<ttl_ms>,<nonce>'
--       (ttl_ms is empty when the job has no TTL; the id is the job key's suffix)
-- Replies: {'EPOCH', current epoch or false}
--          {'TOO_LARGE', index (1-based), size}: nothing was written
--          {'NOT_A_HASH', index (1-based)}: that job's key holds another type; nothing was written
--          {'OK', now, {{index, code, state, enqueued_at, eligible_at} per job NOT stored now}}, where
--            code is 'REPLAY' (stored earlier by the same nonce: redis-py re-sent the call) or
--            'DUPLICATE' (the id is held by another enqueue; state is its state). Every job not
--            listed was stored now: enqueued_at = now, eligible_at = now + delay_ms.
local meta, ready, delayed, signal = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local n = (#ARGV - 2) / 2

-- validate everything before the first write
local bad, counters = check_new_jobs(meta, 3, n)
if bad then
  return bad
end
-- a batch whose ids are all new (one EXISTS says so) skips the per-job lookups; otherwise every
-- existing id is read here, before the first write, so a key that is not a hash fails the call whole
local found = {}
if redis.call('EXISTS', unpack(KEYS, 5)) > 0 then
  for i = 1, n do
    local held = redis.pcall('HMGET', KEYS[4 + i], 'state', 'nonce', 'enqueued_at', 'eligible_at')
    if held.err then
      return {'NOT_A_HASH', i}
    end
    found[i] = held
  end
end

local now = now_ms()
local base_len = #base_of(meta) + 5 -- '<base>job:'
local others = {}
local seq = tonumber(counters[1] or '0')
local first_seq = seq
local waiting, scheduled = {}, {} -- ZADD arguments (score, id, ...) for the ready and delayed sets
local stored = {} -- job key -> {state, nonce, enqueued_at, eligible_at} of the jobs stored by this call
for i = 1, n do
  local job = KEYS[4 + i]
  local id = string.sub(job, base_len)
  local payload = ARGV[1 + i * 2]
  local delay, priority, ttl, nonce = string.match(ARGV[2 + i * 2], '^(%d+),(-?%d+),(-?%d*),(.*)$')
  delay = tonumber(delay)
  local held = stored[job] or found[i] -- the same id twice in one call: the first was stored by it
  if held and held[1] then
    others[#others + 1] = held_entry(i, held, nonce)
  else
    seq = seq + 1
    local fields
    if delay > 0 then
      local due = now + delay
      fields = {'payload', payload, 'state', 'delayed', 'seq', seq, 'nonce', nonce,
        'enqueued_at', now, 'eligible_at', due, 'delay_until', due}
      scheduled[#scheduled + 1] = due
      scheduled[#scheduled + 1] = id
      stored[job] = {'delayed', nonce, now, due}
    else
      fields = {'payload', payload, 'state', 'waiting', 'seq', seq, 'nonce', nonce,
        'enqueued_at', now, 'eligible_at', now}
      waiting[#waiting + 1] = ready_score(priority, seq)
      waiting[#waiting + 1] = id
      stored[job] = {'waiting', nonce, now, now}
    end
    add_job_options(fields, priority, ttl, now)
    redis.call('HSET', job, unpack(fields))
  end
end
if seq ~= first_seq then
  redis.call('HSET', meta, 'seq', seq)
end
if #waiting > 0 then
  redis.call('ZADD', ready, unpack(waiting))
end
if #scheduled > 0 then
  redis.call('ZADD', delayed, unpack(scheduled))
end
-- one wake token per job stored; a delayed job wakes an idle worker too, so it re-reads the next
-- due time (no late start)
wake(signal, seq - first_seq)
return {'OK', now, others}
