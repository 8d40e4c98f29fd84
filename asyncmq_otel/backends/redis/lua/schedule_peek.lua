#!lua flags=no-writes
-- schedule_peek.lua: what a scheduler needs to sleep or fire, read in one call: TIME, the earliest
-- next due time and the due schedules (O(log N + k), never a scan).
-- KEYS: schedules (ZSET key -> next due ms, 'inf' while paused)
-- ARGV: limit (due schedules returned at most)
-- Replies: {now, earliest next due or false, {key, spec, rev, anchor, next_due, paused, last_due,
--           last_job, last_fired} per due schedule}
local schedules = KEYS[1]
local now = now_ms()
local first = redis.call('ZRANGE', schedules, 0, 0, 'WITHSCORES')
local earliest = false
if first[2] and first[2] ~= 'inf' then
  earliest = first[2]
end
local due = {}
if earliest and tonumber(earliest) <= now then
  local base = base_of(schedules)
  local keys = redis.call('ZRANGEBYSCORE', schedules, '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
  for _, key in ipairs(keys) do
    local values = redis.call('HMGET', base .. 'schedule:' .. key, 'spec', 'rev', 'anchor', 'next_due',
      'paused', 'last_due', 'last_job', 'last_fired')
    due[#due + 1] = {key, unpack(values)}
  end
end
return {now, earliest, due}
