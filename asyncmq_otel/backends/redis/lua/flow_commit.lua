-- flow_commit.lua: staged → the state flow_enqueue decided, for jobs of one queue of a flow across queues
-- whose commit record says 'commit' (add_flow's phase 2; the reaper rolls forward the same way).
-- Idempotent: a job no longer staged for this txn (shown already, or rolled back) is left alone.
-- KEYS: meta, staged
-- ARGV: epoch, txn ('<coordinator queue>/<txn id>'), then the ids of the staged jobs
-- Replies: {'EPOCH', current epoch or false}, {'OK', how many jobs were shown now}
local meta, staged = KEYS[1], KEYS[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local base = base_of(meta)
local found, stray = {}, {}
for i = 3, #ARGV do
  local job = base .. 'job:' .. ARGV[i]
  local st = redis.pcall('HMGET', job, 'state', 'flow_txn', 'staged_state', 'priority', 'seq', 'eligible_at')
  if not st.err and st[1] == 'staged' and st[2] == ARGV[2] then
    found[#found + 1] = {ARGV[i], job, st}
  elseif st.err or st[1] ~= 'staged' then
    stray[#stray + 1] = ARGV[i]
  end
end
-- nothing above wrote
for _, id in ipairs(stray) do
  redis.call('ZREM', staged, id) -- an entry whose job is not staged any more (lost, or shown) goes
end
local now = now_ms()
for _, each in ipairs(found) do
  local id, job, st = each[1], each[2], each[3]
  local state = st[3] or 'waiting' -- a hand-edited hash without it: claimable, the worker judges it
  redis.call('HSET', job, 'state', state)
  redis.call('HDEL', job, 'staged_state', 'flow_txn')
  redis.call('ZREM', staged, id)
  flow_show(base, id, state, now, int_field(st[6]) or now, st[4] or '5', st[5])
end
return {'OK', #found}
