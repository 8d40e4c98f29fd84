-- flow_commit.lua: staged → the state flow_enqueue decided, for jobs of one queue of a flow across queues
-- whose commit record says 'commit' (add_flow's phase 2; the reaper rolls forward the same way).
-- Idempotent: a job no longer staged for this txn (shown already, or rolled back) is left alone.
-- KEYS: meta, staged
-- ARGV: epoch, txn ('<coordinator queue>/<txn id>'), then the ids of the staged jobs
-- Replies: {'EPOCH', current epoch or false}, {'OK', how many jobs were shown now}
local meta, staged = KEYS[1], KEYS[2]
local bad, base, found = staged_begin(meta, staged, 'staged_state', 'priority', 'seq', 'eligible_at')
if bad then
  return bad
end
local now = now_ms()
for _, each in ipairs(found) do
  local id, st = each[1], each[2]
  local job = base .. 'job:' .. id
  local state = st[3] or 'waiting' -- a hand-edited hash without it: claimable, the worker judges it
  redis.call('HSET', job, 'state', state)
  redis.call('HDEL', job, 'staged_state', 'flow_txn')
  redis.call('ZREM', staged, id)
  flow_show(base, id, state, now, int_field(st[6]) or now, st[4] or '5', st[5])
end
return {'OK', #found}
