-- flow_enqueue.lua: ∅ → blocked (or waiting / delayed when every parent has completed, or failed with
-- DLQ reason 'dependency_failed' when a parent is dead) for jobs with parents: one job of add(), or
-- the jobs of one queue of a flow, parents before children, all stored or none.
-- KEYS: meta, ready, delayed, signal, blocked, dlq, failed, then job:<id> for each job, in ARGV order
-- ARGV: epoch, '<max_payload_bytes>' or, to stage the jobs of a flow across queues (add_flow, phase 1),
--       '<max_payload_bytes>,<coordinator queue>/<txn id>,<stage_ms>', then 3 per job: payload,
--       '<delay_ms>,<priority>,<ttl_ms>,<on_parent_failure>,<flow_id>,<nonce>' (ttl_ms empty without a
--       TTL; flow_id empty: the first parent's, a parent without one taking its own id),
--       the parents joined by ',', each '<queue>/<id>=<found>': <found> is empty for a parent of this
--       queue (looked up here) and, for a parent in another queue, what flow_link.lua answered there:
--       'done', 'dead' or 'pending'
-- Replies: {'EPOCH', current epoch or false}, {'TOO_LARGE', index, size}, {'MISSING', index, parent ref},
--          {'NOT_A_HASH', index, parent ref or ''} (that job's key, or its parent's, holds another type):
--            nothing was written
--          {'OK', now, {{index, code, state, enqueued_at, eligible_at} per job NOT stored now}, as in
--            enqueue.lua, {{index, state} per job stored now}}; a staged job is stored with state
--            'staged', its decided state in 'staged_state' and the txn in 'flow_txn', in the `staged` ZSET
--            scored by now + stage_ms (flow_commit shows it; the reaper rolls it forward or back)
local meta, ready, delayed, signal, blocked = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local dlq, failed = KEYS[6], KEYS[7]
local limit, txn, stage_ms = string.match(ARGV[2], '^(%d+),?([^,]*),?(%d*)$')
limit = tonumber(limit)
local n = (#ARGV - 2) / 3
local DEAD = {failed = true, expired = true, cancelled = true}

local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local base = base_of(meta)
local me = flow_queue(base)
local base_len = #base + 5 -- '<base>job:'
-- validate everything before the first write: sizes, and every parent of this queue exists
-- (stored before, or by an earlier job of this call); every hash read below the writes is read here
-- with pcall, so a key of another type fails the call whole (nothing fails after a write)
local parsed, new_here, held_of, parent_of = {}, {}, {}, {}
for i = 1, n do
  local payload, spec, parents = ARGV[i * 3], ARGV[i * 3 + 1], ARGV[i * 3 + 2]
  if #payload > limit then
    return {'TOO_LARGE', i, #payload}
  end
  local job = KEYS[7 + i]
  local id = string.sub(job, base_len)
  local held = redis.pcall('HMGET', job, 'state', 'nonce', 'enqueued_at', 'eligible_at', 'flow_id')
  if held.err then
    return {'NOT_A_HASH', i, ''}
  end
  held_of[job] = held_of[job] or held -- the same id twice: the first read is the one before any write
  local refs = {}
  for ref, found in string.gmatch(parents, '([^,=]+)=([^,]*)') do
    local q, pid = string.match(ref, '^(.*)/(.*)$')
    if q == me and not new_here[pid] and not parent_of[pid] then
      local by = redis.pcall('HMGET', base .. 'job:' .. pid, 'state', 'flow_id', 'flow_txn')
      if by.err then
        return {'NOT_A_HASH', i, ref}
      end
      -- a job of another flow not committed yet is not stored, as far as anyone else knows
      if (by[1] == 'staged' and by[3] ~= txn) or (not by[1] and redis.call('EXISTS', base .. 'job:' .. pid) == 0) then
        return {'MISSING', i, ref}
      end
      parent_of[pid] = {by[1], false, false, false, by[2]} -- shaped as held_of: the flow id 5th
    end
    refs[#refs + 1] = {ref, q, pid, found}
  end
  new_here[id] = true
  parsed[i] = {job, id, payload, spec, refs}
end

-- nothing above wrote; everything below writes
local now = now_ms()
local others, stored, written = {}, {}, {} -- written: job key -> {state, nonce, now, eligible, flow}
for i = 1, n do
  local job, id, payload, spec, refs = unpack(parsed[i])
  local delay, priority, ttl, on_failure, flow, nonce =
    string.match(spec, '^(%d+),(-?%d+),(-?%d*),(%a*),([^,]*),(.*)$')
  delay = tonumber(delay)
  local held = written[job] or held_of[job]
  if held[1] then
    others[#others + 1] = held_entry(i, held, nonce)
  else
    local pending, dead, names = {}, {}, {}
    for _, parent in ipairs(refs) do
      local ref, q, pid, found = parent[1], parent[2], parent[3], parent[4]
      names[#names + 1] = ref
      if q == me then
        local pkey = base .. 'job:' .. pid
        local held_by = written[pkey] or parent_of[pid] or held_of[pkey]
        local pflow = held_by[5]
        found = held_by[1]
        if not pflow then -- a parent without a flow id takes its own (flows.py)
          redis.call('HSET', pkey, 'flow_id', pid)
          held_by[5] = pid
        end
        if flow == '' then
          flow = pflow or pid
        end
        if found ~= 'completed' then
          redis.call('HSET', base .. 'children:' .. pid, me .. '/' .. id, 1)
          if found then -- complete.lua looks for children only when this is set
            redis.call('HSET', base .. 'job:' .. pid, 'has_children', 1)
          end
        end
        if found == 'completed' then
          found = 'done'
        elseif DEAD[found] then
          found = 'dead'
        end
      end
      if found == 'dead' and on_failure == 'run' then
        found = 'done'
      end
      if found ~= 'done' then
        pending[#pending + 1] = ref
        if found == 'dead' then
          dead[#dead + 1] = ref
        end
      end
    end
    local seq = next_seq(meta)
    local fields = {'payload', payload, 'seq', seq, 'nonce', nonce, 'enqueued_at', now,
      'parents', table.concat(names, ',')}
    if on_failure ~= 'fail' then
      fields[#fields + 1] = 'on_parent_failure'
      fields[#fields + 1] = on_failure
    end
    if flow ~= '' then
      fields[#fields + 1] = 'flow_id'
      fields[#fields + 1] = flow
    end
    add_job_options(fields, priority, ttl, now)
    local state, eligible = 'blocked', now
    if delay > 0 then
      fields[#fields + 1] = 'delay_until'
      fields[#fields + 1] = now + delay
    end
    if #pending > 0 then
      redis.call('HSET', base .. 'deps:' .. id, unpack(flow_fields(pending)))
    end
    if #dead > 0 then
      state = 'failed'
      redis.call('HSET', base .. 'failed_for:' .. id, unpack(flow_fields(dead)))
      fields[#fields + 1] = 'dlq_reason'
      fields[#fields + 1] = 'dependency_failed'
      fields[#fields + 1] = 'error'
      fields[#fields + 1] = FLOW_ERROR
      fields[#fields + 1] = 'finished_at'
      fields[#fields + 1] = now
    elseif #pending == 0 and delay > 0 then
      state, eligible = 'delayed', now + delay
    elseif #pending == 0 then
      state = 'waiting'
    end
    local shown = state
    if txn ~= '' then -- staged: invisible (no index, no wake) until flow_commit
      shown = 'staged'
      redis.call('ZADD', base .. 'staged', now + tonumber(stage_ms), id)
      fields[#fields + 1] = 'staged_state'
      fields[#fields + 1] = state
      fields[#fields + 1] = 'flow_txn'
      fields[#fields + 1] = txn
    else
      flow_show(base, id, state, now, eligible, priority, seq)
    end
    fields[#fields + 1] = 'state'
    fields[#fields + 1] = shown
    fields[#fields + 1] = 'eligible_at'
    fields[#fields + 1] = eligible
    redis.call('HSET', job, unpack(fields))
    written[job] = {shown, nonce, now, eligible, flow ~= '' and flow or false}
    stored[#stored + 1] = {i, state}
  end
end
return {'OK', now, others, stored}
