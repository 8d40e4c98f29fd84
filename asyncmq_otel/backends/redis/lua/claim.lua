-- claim.lua: due delayed → waiting (at most promote_limit), then waiting → active (at most count).
-- KEYS: meta, ready, delayed, leases, signal, claim:<nonce>, rate
-- ARGV: epoch, worker_id, count, lease_ms, nonce, promote_limit
-- Replies: {'EPOCH', current epoch or false}
--          {'PAUSED', now}: the queue is paused, nothing was claimed
--          {'EMPTY', now, ms until the next delayed job is due, or -1 when there is none}
--          {'THROTTLED', now, ms until a token frees}: jobs are ready but the queue's shared rate
--            limit has none left; nothing was claimed
--          {'OK', now, {{id, {JOB_FIELDS values}} per claimed job}, fresh, throttled ms or -1}: job i
--            holds token '<nonce>.<i-1>'. With fresh = 1 the values are those read before the claim
--            (the client applies what the claim wrote: state, token, owner, attempts + 1); with 0 (a
--            replay) after. throttled ms >= 0 when the rate limit cut the claim short.
-- Shared rate limit (meta rate_limit, rate_interval ms): `rate` is a sliding log of claim times in
-- µs (Redis TIME), one member per claimed job (its token), trimmed on every claim. A claim takes at
-- most limit - |log in the last interval| jobs, so no window of `interval` ever holds more than
-- `limit` claims (a fixed window would allow twice that across its boundary); at most `limit`
-- members (no expiry: PEXPIRE is outside the documented ACL; rate_limit.lua deletes it on clear).
-- Replay: redis-py re-sends the call after a lost reply with the same nonce; the claim key
-- (PX = lease) then answers with the same jobs, so no lease is orphaned.
-- Malformed entries: a job key that is not a hash is quarantined, and a hash without a
-- known state or with an attempts count that is not an integer is claimed as it is (attempts
-- untouched); both are handed over like any claimed job, and the worker's decode dead-letters them
-- as malformed_payload. No job entry can make the script fail after its first write.
local meta, ready, delayed, leases, signal, claim_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local rate = KEYS[7]
local worker, count, lease, nonce = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local bad, flags = epoch_and(meta, ARGV[1], 'paused', 'rate_limit', 'rate_interval')
if bad then
  return bad
end
local base = base_of(meta)
local now = now_ms()

local previous = redis.call('GET', claim_key)
if previous then
  local jobs = {}
  local i = 0
  for id in string.gmatch(previous, '[^,]+') do
    local job = base .. 'job:' .. id
    local values = redis.pcall('HMGET', job, unpack(JOB_FIELDS))
    if values[2] == 'active' and values[7] == nonce .. '.' .. i then -- JOB_FIELDS[2] is state, [7] token
      jobs[#jobs + 1] = {id, values}
    end
    i = i + 1
  end
  return {'OK', now, jobs, 0}
end

-- promote due delayed jobs to the back of their priority (never before their due TIME)
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, tonumber(ARGV[6]))
if #due > 0 then
  local promoted = 0
  for _, id in ipairs(due) do
    local job = base .. 'job:' .. id
    local st = read_job(job, 'state', 'priority') -- another type: quarantined, no state
    if st[1] == 'delayed' then
      local seq = next_seq(meta)
      redis.call('HSET', job, 'state', 'waiting', 'seq', seq)
      redis.call('ZADD', ready, ready_score(st[2], seq), id)
      promoted = promoted + 1
    elseif not JOB_STATES[st[1] or ''] and redis.call('EXISTS', job) == 1 then
      -- no known state: into ready as it is, for the claim below to hand over as malformed
      local seq = next_seq(meta)
      redis.call('HSET', job, 'seq', seq)
      redis.call('ZADD', ready, ready_score(st[2], seq), id)
      promoted = promoted + 1
    end
  end
  redis.call('ZREM', delayed, unpack(due))
  wake(signal, promoted)
end

if flags[1] == '1' then
  return {'PAUSED', now}
end

-- the shared rate limit; hand-written garbage in its fields reads as no limit
local rate_limit, window, claim_us, cut = int_field(flags[2]), int_field(flags[3]), nil, false
if rate_limit and window and rate_limit > 0 and window > 0 then
  claim_us, window = now_us(), window * 1000
  redis.call('ZREMRANGEBYSCORE', rate, '-inf', claim_us - window)
  local free = math.max(rate_limit - redis.call('ZCARD', rate), 0)
  if free < count then
    count, cut = free, true
  end
end
-- ms until the oldest claim in the log leaves the window (a token frees)
local function token_wait()
  local oldest = redis.call('ZRANGE', rate, 0, 0, 'WITHSCORES')
  if not oldest[2] then
    return 0
  end
  return math.max(math.ceil((tonumber(oldest[2]) + window - claim_us) / 1000), 1)
end
if cut and count == 0 and redis.call('ZCARD', ready) > 0 then
  return {'THROTTLED', now, token_wait()}
end

local popped = {}
if count > 0 then
  popped = redis.call('ZPOPMIN', ready, count)
end
local jobs, ids, leased = {}, {}, {}
local deadline = now + lease
for k = 1, #popped, 2 do
  local id = popped[k]
  local job = base .. 'job:' .. id
  local values, error = read_job(job, unpack(JOB_FIELDS))
  local state, attempts = false, nil
  if error then -- not a hash: quarantined, then claimed with no payload (the worker dead-letters it)
    for i = 1, #JOB_FIELDS do
      values[i] = false
    end
    values[11] = error -- JOB_FIELDS[11] is error
    state, attempts = 'malformed', 0
  else
    state = values[2] -- JOB_FIELDS[2] is state, [3] attempts
    if state ~= 'waiting' and not JOB_STATES[state or ''] and (values[1] or redis.call('EXISTS', job) == 1) then
      state = 'malformed'
    end
    if not values[3] then
      attempts = 0
    else
      attempts = int_field(values[3])
      if not attempts and state == 'waiting' then
        state = 'malformed' -- 'attempts + 1' cannot be computed
      end
    end
  end
  if state == 'waiting' or state == 'malformed' then
    local token = nonce .. '.' .. #ids
    if not attempts then -- malformed attempts: left as found, for the dead letter to show
      redis.call('HSET', job, 'state', 'active', 'token', token, 'owner', worker, 'settled_token', '',
        'cancel_requested', '')
    elseif values[3] then -- claimed before, so clear what that attempt left
      redis.call('HSET', job, 'state', 'active', 'token', token, 'owner', worker, 'settled_token', '',
        'cancel_requested', '', 'attempts', attempts + 1)
    else -- never claimed: no settle or cancel request to clear (cancel flags only active jobs)
      redis.call('HSET', job, 'state', 'active', 'token', token, 'owner', worker, 'attempts', attempts + 1)
    end
    ids[#ids + 1] = id
    leased[#leased + 1] = deadline
    leased[#leased + 1] = id
    jobs[#jobs + 1] = {id, values}
  end
end

if #jobs == 0 then
  local head = redis.call('ZRANGE', delayed, 0, 0, 'WITHSCORES')
  local wait = -1
  if head[2] then
    wait = math.max(tonumber(head[2]) - now, 0)
  end
  return {'EMPTY', now, wait}
end
redis.call('ZADD', leases, unpack(leased))
redis.call('SET', claim_key, table.concat(ids, ','), 'PX', lease)
if not claim_us then
  return {'OK', now, jobs, 1, -1}
end
local logged = {}
for i = 0, #ids - 1 do
  logged[#logged + 1] = claim_us
  logged[#logged + 1] = nonce .. '.' .. i
end
redis.call('ZADD', rate, unpack(logged))
return {'OK', now, jobs, 1, cut and token_wait() or -1}
