-- enqueue.lua: ∅ → waiting / delayed, for one job or a batch (bulk enqueue is one call per 500 jobs).
-- KEYS: meta, ready, delayed, signal, then job:<id> for each job, in ARGV order
-- ARGV: epoch, max_payload_bytes, then 2 per job: payload, '<delay_ms>,<priority>,<ttl_ms>,<nonce>'
--       (ttl_ms is empty when the job has no TTL; the id is the job key's suffix)
-- Replies: {'EPOCH', current epoch or false}
--          {'TOO_LARGE', index (1-based), size}: nothing was written
--          {'OK', now, {{index, code, state, enqueued_at, eligible_at} per job NOT stored now}}, where
--            code is 'REPLAY' (stored earlier by the same nonce: redis-py re-sent the call) or
--            'DUPLICATE' (the id is held by another enqueue; state is its state). Every job not
--            listed was stored now: enqueued_at = now, eligible_at = now + delay_ms.
local meta, ready, delayed, signal = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit = tonumber(ARGV[2])
local n = (#ARGV - 2) / 2

-- validate everything before the first write
for i = 1, n do
  local size = #ARGV[1 + i * 2]
  if size > limit then
    return {'TOO_LARGE', i, size}
  end
end
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end

local now = now_ms()
local base_len = #base_of(meta) + 5 -- '<base>job:'
local others = {}
local wakes = 0
local seq = tonumber(redis.call('HGET', meta, 'seq') or '0')
local first_seq = seq
for i = 1, n do
  local job = KEYS[4 + i]
  local id = string.sub(job, base_len)
  local payload = ARGV[1 + i * 2]
  local delay, priority, ttl, nonce = string.match(ARGV[2 + i * 2], '^(%d+),(-?%d+),(-?%d*),(.*)$')
  delay = tonumber(delay)
  local held = redis.call('HMGET', job, 'state', 'nonce', 'enqueued_at', 'eligible_at')
  if held[1] then
    local code = 'DUPLICATE'
    if nonce ~= '' and held[2] == nonce then
      code = 'REPLAY'
    end
    others[#others + 1] = {i, code, held[1], tonumber(held[3]) or 0, tonumber(held[4]) or 0}
  else
    seq = seq + 1
    local expires = false
    if ttl ~= '' then
      expires = now + tonumber(ttl)
    end
    if delay > 0 then
      local due = now + delay
      redis.call('HSET', job, 'payload', payload, 'state', 'delayed', 'priority', priority, 'seq', seq,
        'nonce', nonce, 'enqueued_at', now, 'eligible_at', due, 'delay_until', due)
      redis.call('ZADD', delayed, due, id)
    else
      redis.call('HSET', job, 'payload', payload, 'state', 'waiting', 'priority', priority, 'seq', seq,
        'nonce', nonce, 'enqueued_at', now, 'eligible_at', now)
      redis.call('ZADD', ready, ready_score(priority, seq), id)
    end
    if expires then
      redis.call('HSET', job, 'expires_at', expires)
    end
    -- a delayed job wakes one idle worker too, so it re-reads the next due time (no late start)
    wakes = wakes + 1
  end
end
if seq ~= first_seq then
  redis.call('HSET', meta, 'seq', seq)
end
wake(signal, wakes)
return {'OK', now, others}
