-- _fence.lua: the prelude prepended to every script at load time (after its shebang line).
-- It only defines helpers; nothing here reads or writes a key until a script calls it.
--
-- Conventions shared by every script:
--   * times are integer milliseconds from Redis TIME (one clock for every host), never from a client clock;
--   * an absent optional field is the empty string, and counters missing from a hash read as 0;
--   * the ready score is priority * 2^44 + seq, so a job keeps its place when it comes back;
--   * keys a script cannot know in advance (job hashes of popped ids) are built from the
--     `<prefix>:{<queue>}:` base of a declared key, so they land in the same cluster slot.

local PRIORITY_WEIGHT = 17592186044416 -- 2^44: priorities in [-500, 500] keep scores below 2^53
local SIGNAL_CAP = 1024

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Redis TIME in microseconds (exact in a double): the shared rate limit's sliding log orders claims
-- finer than a millisecond.
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

-- The `<prefix>:{<queue>}:` part of a declared key: queue names cannot hold '}', so the last
-- '}:' closes the hash tag.
local function base_of(key)
  return string.match(key, '^(.*}:)')
end

-- nil when `epoch` is the queue's current epoch, else the EPOCH reply (data loss: a restarted Redis without our data gets a new epoch).
local function epoch_reply(meta, epoch)
  local current = redis.call('HGET', meta, 'epoch')
  if current ~= epoch then
    return {'EPOCH', current or false}
  end
  return nil
end

-- epoch_reply that reads more fields of meta in the same HMGET: returns the EPOCH reply (or nil)
-- and the values of `fields`, in order.
local function epoch_and(meta, epoch, ...)
  local values = redis.call('HMGET', meta, 'epoch', ...)
  if values[1] ~= epoch then
    return {'EPOCH', values[1] or false}, values
  end
  table.remove(values, 1)
  return nil, values
end

-- The lease fence on the values of HMGET job state token settled_token owner: nil when `token`
-- holds the active job; else the reply to return: REPLAY (this settle was applied already), GONE,
-- or STALE with the state and current owner.
local function fence_values(st, token)
  if not st[1] then
    return {'GONE'}
  end
  if token ~= '' and st[3] == token then
    return {'REPLAY'}
  end
  if st[1] ~= 'active' or st[2] ~= token then
    return {'STALE', st[1], st[4] or ''}
  end
  return nil
end

-- A counter or millisecond field as a number, or nil when it is absent or not a plain integer
-- (stored data is hostile input: hand-written values such as 'abc', '1e+303', 'nan' or 'inf' must not make a
-- script fail after its first write): ASCII digits and an optional '-', at most 15 digits, so the
-- value is exact in a double. The Python decode (_count in _decode.py) accepts exactly these.
local function int_field(value)
  if type(value) == 'number' then
    return value
  end
  if value then
    local digits = string.match(value, '^%-?(%d+)$')
    if digits and #digits <= 15 then
      return tonumber(value)
    end
  end
  return nil
end

-- The ready score of a stored priority and seq. Either may be hand-written garbage: a priority
-- outside [-500, 500] or not a number reads as the default 5, a bad seq as 0 (the front of its
-- priority), so the job stays claimable and the worker's decode judges the rest.
local function ready_score(priority, seq)
  local p = tonumber(priority)
  if not p or p ~= p or p > 500 or p < -500 then
    p = 5
  end
  return p * PRIORITY_WEIGHT + (int_field(seq) or 0)
end

-- The checks before a batch of new jobs writes anything. The script's ARGV starts with the epoch and
-- max_payload_bytes, and holds `n` payloads at ARGV[first], ARGV[first + 2], ...: returns the reply
-- {'TOO_LARGE', index, size} for the first payload over the limit, or epoch_and's (the EPOCH reply
-- or nil, then the queue's seq counter).
local function check_new_jobs(meta, first, n)
  local limit = tonumber(ARGV[2])
  for i = 1, n do
    local size = #ARGV[first + (i - 1) * 2]
    if size > limit then
      return {'TOO_LARGE', i, size}
    end
  end
  return epoch_and(meta, ARGV[1], 'seq')
end

-- Append a new job's optional fields to its HSET arguments `fields`: its priority unless the
-- default 5 (an absent priority reads as 5, see ready_score), and expires_at for a TTL in ms
-- (the empty string: no TTL).
local function add_job_options(fields, priority, ttl, now)
  if priority ~= '5' then
    fields[#fields + 1] = 'priority'
    fields[#fields + 1] = priority
  end
  if ttl ~= '' then
    fields[#fields + 1] = 'expires_at'
    fields[#fields + 1] = now + tonumber(ttl)
  end
end

-- The reply entry {index, code, state, enqueued_at, eligible_at} of job `i` of an enqueue whose id is
-- held already (`held`: its HMGET state nonce enqueued_at eligible_at): REPLAY when the same enqueue
-- stored it (the nonce matches: redis-py re-sent the call), else DUPLICATE. A stored time that is not
-- a plain integer reads as 0, as the Python decode would read it.
local function held_entry(i, held, nonce)
  local code = 'DUPLICATE'
  if nonce ~= '' and held[2] == nonce then
    code = 'REPLAY'
  end
  return {i, code, held[1], int_field(held[3]) or 0, int_field(held[4]) or 0}
end

-- The states a stored job can be in; any other value (or none) marks a malformed job hash.
local JOB_STATES = {waiting = true, delayed = true, active = true, completed = true, failed = true,
  expired = true, cancelled = true}

-- A job key that holds something other than a hash (written over by another program) cannot be
-- read or fenced. It is quarantined by itself (one bad key never takes its neighbours): a string value is kept in the `quarantined`
-- field (other types cannot be read by the documented ACL user, so they are deleted), and the key
-- becomes a job hash with no payload and no state whose `error` says what happened. The next claim
-- hands it to a worker as malformed, which dead-letters it as malformed_payload with its event.
-- Returns the error JSON.
local function quarantine(job)
  local kept = redis.pcall('GET', job)
  local message
  if type(kept) == 'string' then
    message = 'the job key held a string, not a hash; its value is kept in the field quarantined'
  else
    message = 'the job key held a list, set, sorted set or stream, not a hash; it was deleted'
    kept = ''
  end
  local error = '{"type":"malformed_payload","message":"' .. message .. '","traceback":""}'
  redis.call('DEL', job)
  redis.call('HSET', job, 'error', error, 'quarantined', kept)
  return error
end

-- The `...` fields of a job hash (HMGET through pcall). A key written over with another type is
-- quarantined and reads as a job without them; the second value is then the quarantine's error JSON
-- (else nil).
local function read_job(job, ...)
  local values = redis.pcall('HMGET', job, ...)
  if values.err then
    return {}, quarantine(job)
  end
  return values, nil
end

-- fence_values on the job hash. A key written over with another type is quarantined and answers
-- GONE: its lease entry stays, so the reaper puts it in ready and a claim dead-letters it.
local function fence(job, token)
  local st, quarantined = read_job(job, 'state', 'token', 'settled_token', 'owner')
  if quarantined then
    return {'GONE'}
  end
  return fence_values(st, token)
end

-- Push `n` wake tokens for idle workers blocked in BLPOP; the list never grows past SIGNAL_CAP
-- (a full list already wakes every worker that could come, so then nothing is pushed).
local function wake(signal, n)
  if n <= 0 then
    return
  end
  local room = SIGNAL_CAP - redis.call('LLEN', signal)
  if n > room then
    n = room
  end
  if n <= 0 then
    return
  end
  local tokens = {}
  for i = 1, n do
    tokens[i] = '1'
  end
  redis.call('LPUSH', signal, unpack(tokens))
end

-- The next FIFO sequence number of the queue.
local function next_seq(meta)
  return redis.call('HINCRBY', meta, 'seq', 1)
end

-- A page of work: the first `limit` members of sorted set `key` scored up to `max`, lowest first, and
-- 1 when more follow them (the caller calls again), else 0.
local function page_upto(key, max, limit)
  local ids = redis.call('ZRANGEBYSCORE', key, '-inf', max, 'LIMIT', 0, limit + 1)
  local more = 0
  if #ids > limit then
    more = 1
    ids[#ids] = nil
  end
  return ids, more
end

-- Retention: delete at most `budget` of the oldest entries of `index` beyond `keep`
-- entries or finished before `cutoff`, with their job hashes and their entries in `others`.
local function trim(index, keep, cutoff, base, budget, others)
  local n = redis.call('ZCARD', index) - keep
  if n < budget then
    local aged = redis.call('ZCOUNT', index, '-inf', string.format('(%d', cutoff))
    if aged > n then
      n = aged
    end
  end
  if n > budget then
    n = budget
  end
  if n <= 0 then
    return 0
  end
  local ids = redis.call('ZRANGE', index, 0, n - 1)
  local jobs = {}
  for _, id in ipairs(ids) do
    -- a job's flow sets go with it (absent for jobs without parents or children)
    for _, name in ipairs({'job:', 'children:', 'deps:', 'failed_for:'}) do
      jobs[#jobs + 1] = base .. name .. id
    end
  end
  redis.call('DEL', unpack(jobs))
  redis.call('ZREMRANGEBYRANK', index, 0, n - 1)
  if others then
    for _, other in ipairs(others) do
      redis.call('ZREM', other, unpack(ids))
    end
  end
  return n
end

-- Flows: a job with parents is 'blocked' (in the `blocked` index) while `deps:<id>` holds the refs
-- ('<queue>/<id>') of parents that have not completed; `children:<id>` holds the refs of a job's
-- children; `failed_for:<id>` the parents a child was dead-lettered for. These are hashes used as
-- sets (field = ref, value 1): the documented ACL user has the hash commands and not the set ones. A child in another queue
-- (another hash tag, so another slot) is reached through the `outbox` of the parent's queue, which
-- the reaper delivers with flow_deliver.lua: every step here is idempotent, so a redelivery is harmless.
local FLOW_ERROR = '{"type":"DependencyFailed","message":"a parent did not complete; '
  .. 'retry the parent from the DLQ to run this job"}'

local function flow_fields(refs)
  local out = {}
  for _, ref in ipairs(refs) do
    out[#out + 1] = ref
    out[#out + 1] = 1
  end
  return out
end

-- A child dead-lettered for a parent: the reaper reports it (job:failed); the list is capped.
local function flow_report(base, cid)
  local failed = base .. 'flow_failed'
  redis.call('RPUSH', failed, cid)
  redis.call('LTRIM', failed, -10000, -1)
end

local function flow_queue(base)
  return string.match(base, '{(.*)}:$')
end

-- A new job of a flow enters `state` (as flow_enqueue decided it): its index entry, and a wake token
-- (or the report of a child dead-lettered for a parent). flow_enqueue calls it at once; for a flow
-- across queues, flow_commit does after the commit record (jobs wait `staged` until then).
local function flow_show(base, id, state, now, eligible, priority, seq)
  if state == 'failed' then
    redis.call('ZADD', base .. 'failed', now, id)
    redis.call('ZADD', base .. 'dlq', now, id)
    flow_report(base, id)
  elseif state == 'blocked' then
    redis.call('ZADD', base .. 'blocked', now, id)
  elseif state == 'delayed' then
    redis.call('ZADD', base .. 'delayed', eligible, id)
    wake(base .. 'signal', 1)
  else
    redis.call('ZADD', base .. 'ready', ready_score(priority, seq), id)
    wake(base .. 'signal', 1)
  end
end

-- The start of flow_commit and flow_rollback (KEYS[1] meta; ARGV: epoch, txn, then the ids of
-- staged jobs): the EPOCH reply, having written nothing; else nil, the key base, and {id, values}
-- for each job still staged for this txn, values being its HMGET state flow_txn `...`. An entry of
-- `staged` whose job is not staged any more (lost, written over, or shown) goes: the first write.
local function staged_begin(meta, staged, ...)
  local bad = epoch_reply(meta, ARGV[1])
  if bad then
    return bad
  end
  local base = base_of(meta)
  local found, stray = {}, {}
  for i = 3, #ARGV do
    local st = redis.pcall('HMGET', base .. 'job:' .. ARGV[i], 'state', 'flow_txn', ...)
    if not st.err and st[1] == 'staged' and st[2] == ARGV[2] then
      found[#found + 1] = {ARGV[i], st}
    elseif st.err or st[1] ~= 'staged' then
      stray[#stray + 1] = ARGV[i]
    end
  end
  for _, id in ipairs(stray) do
    redis.call('ZREM', staged, id)
  end
  return nil, base, found
end

-- An outcome for a child still `staged` (its flow is not committed yet) waits in the outbox: the
-- reaper delivers it once the child is visible, or drops it when the flow is rolled back.
local function flow_defer(base, cid, pref, outcome, now)
  redis.call('ZADD', base .. 'outbox', now, outcome .. '|' .. pref .. '|' .. flow_queue(base) .. '/' .. cid)
end

-- One parent's outcome ('done' or 'dead') applied to child `cid` of this queue; true when it
-- dead-lettered the child (its own children follow).
local function flow_apply(base, cid, pref, outcome, now)
  local job = base .. 'job:' .. cid
  local st = redis.call('HMGET', job, 'state', 'on_parent_failure', 'dlq_reason', 'priority', 'delay_until')
  if not st[1] then
    return false
  elseif st[1] == 'staged' then
    flow_defer(base, cid, pref, outcome, now)
    return false
  end
  local deps = base .. 'deps:' .. cid
  if outcome == 'done' or st[2] == 'run' then
    if redis.call('HDEL', deps, pref) == 0 or st[1] ~= 'blocked' or redis.call('HLEN', deps) > 0 then
      return false
    end
    redis.call('ZREM', base .. 'blocked', cid)
    local seq = next_seq(base .. 'meta')
    local due = tonumber(st[5] or '')
    if due and due > now then
      redis.call('HSET', job, 'state', 'delayed', 'seq', seq, 'eligible_at', due)
      redis.call('ZADD', base .. 'delayed', due, cid)
    else
      redis.call('HSET', job, 'state', 'waiting', 'seq', seq, 'eligible_at', now)
      redis.call('ZADD', base .. 'ready', ready_score(st[4], seq), cid)
    end
    wake(base .. 'signal', 1)
    return false
  end
  if st[1] == 'blocked' then
    redis.call('HSET', base .. 'failed_for:' .. cid, pref, 1)
    redis.call('ZREM', base .. 'blocked', cid)
    redis.call('HSET', job, 'state', 'failed', 'finished_at', now, 'dlq_reason', 'dependency_failed',
      'error', FLOW_ERROR)
    redis.call('ZADD', base .. 'failed', now, cid)
    redis.call('ZADD', base .. 'dlq', now, cid)
    flow_report(base, cid)
    return true
  end
  if st[1] == 'failed' and st[3] == 'dependency_failed' then
    redis.call('HSET', base .. 'failed_for:' .. cid, pref, 1) -- dead already: one more reason
  end
  return false
end

-- Job `id` of this queue finished: 'done' (completed) or 'dead' (dead-lettered or cancelled).
-- Children here are released or dead-lettered now, in this script; children elsewhere get an
-- outbox entry. Dead-lettering cascades through a work list (no recursion limit on long chains).
local function flow_settled(base, id, outcome, now)
  local me = flow_queue(base)
  local work, i = {{id, outcome}}, 1
  while i <= #work do
    local pid, out = work[i][1], work[i][2]
    i = i + 1
    local pref = me .. '/' .. pid
    local children = base .. 'children:' .. pid
    for _, ref in ipairs(redis.call('HKEYS', children)) do
      local q, cid = string.match(ref, '^(.*)/(.*)$')
      if q ~= me then
        redis.call('ZADD', base .. 'outbox', now, out .. '|' .. pref .. '|' .. ref)
      elseif flow_apply(base, cid, pref, out, now) then
        work[#work + 1] = {cid, 'dead'}
      end
    end
  end
end

-- Child `cid` of this queue was dead-lettered for `pref`, which left the DLQ: blocked again when
-- that was its only dead parent; true when it was.
local function flow_reblock(base, cid, pref)
  local job = base .. 'job:' .. cid
  local st = redis.call('HMGET', job, 'state', 'dlq_reason')
  if st[1] == 'staged' then
    flow_defer(base, cid, pref, 'retried', now_ms())
  end
  if st[1] ~= 'failed' or st[2] ~= 'dependency_failed' then
    return false
  end
  local reasons = base .. 'failed_for:' .. cid
  if redis.call('HDEL', reasons, pref) == 0 or redis.call('HLEN', reasons) > 0 then
    return false
  end
  redis.call('ZREM', base .. 'dlq', cid)
  redis.call('ZREM', base .. 'failed', cid)
  redis.call('HSET', job, 'state', 'blocked', 'dlq_reason', '', 'error', '', 'finished_at', '')
  redis.call('ZADD', base .. 'blocked', now_ms(), cid)
  return true
end

-- Job `id` of this queue left the DLQ: re-block the descendants dead-lettered only for it.
local function flow_retried(base, id, now)
  local me = flow_queue(base)
  local work, i = {id}, 1
  while i <= #work do
    local pid = work[i]
    i = i + 1
    local pref = me .. '/' .. pid
    for _, ref in ipairs(redis.call('HKEYS', base .. 'children:' .. pid)) do
      local q, cid = string.match(ref, '^(.*)/(.*)$')
      if q ~= me then
        redis.call('ZADD', base .. 'outbox', now, 'retried|' .. pref .. '|' .. ref)
      elseif flow_reblock(base, cid, pref) then
        work[#work + 1] = cid
      end
    end
  end
end

-- A finished job goes into its state index (`completed`, `cancelled`, `failed` or `expired`), and
-- a dead-lettered one into `dlq` too; then retention runs on `dlq` or on the state index.
-- `fields` are more field/value pairs written by the same HSET.
local function finish(job, id, state, now, base, fields, index, keep, age_ms, dlq, failed, expired)
  local hset = {'HSET', job, 'state', state, 'finished_at', now}
  for _, value in ipairs(fields) do
    hset[#hset + 1] = value
  end
  redis.call(unpack(hset))
  redis.call('ZADD', index, now, id)
  flow_settled(base, id, 'dead', now) -- finish() only dead-letters or cancels: children must know
  if dlq then
    redis.call('ZADD', dlq, now, id)
    trim(dlq, keep, now - age_ms, base, 10, {failed, expired})
  else
    trim(index, keep, now - age_ms, base, 10, nil)
  end
end

-- A job as replies carry it: its id, then the values of JOB_FIELDS packed into one string, each
-- as '<length>:<bytes>' or '-' when absent. One reply element instead of an HGETALL's forty:
-- redis-py parses replies element by element, and table.concat costs Redis next to nothing.
local JOB_FIELDS = {'payload', 'state', 'attempts', 'retries', 'stalls', 'interrupts', 'token', 'owner',
  'cancel_requested', 'result', 'error', 'dlq_reason', 'enqueued_at', 'eligible_at', 'delay_until',
  'expires_at', 'finished_at', 'progress', 'prev_attempt', 'flow_id'}

local function pack(values)
  local parts = {}
  for i = 1, #JOB_FIELDS do
    local value = values[i]
    if value then
      parts[i] = string.format('%d:', #value) .. value
    else
      parts[i] = '-'
    end
  end
  return table.concat(parts)
end

local function flat_job(job, id)
  return {id, pack(redis.call('HMGET', job, unpack(JOB_FIELDS)))}
end

-- The start of a settle of one job by its lease holder (defer, requeue, retry, fail,
-- settle_cancelled; complete settles a batch and fences each job itself). Returns the reply to
-- return at once, having written nothing: EPOCH, GONE, STALE, or on a replay (this settle was applied
-- already: redis-py re-sent the call) {'OK', the job as it is now}, which is what the settle
-- answered. Otherwise the settle goes ahead: the job leaves `leases` (its first write), and the
-- second value is now_ms().
local function settle_begin(meta, leases, job, epoch, token, id)
  local bad = epoch_reply(meta, epoch) or fence(job, token)
  if bad then
    if bad[1] == 'REPLAY' then
      return {'OK', flat_job(job, id)}
    end
    return bad
  end
  redis.call('ZREM', leases, id)
  return nil, now_ms()
end
