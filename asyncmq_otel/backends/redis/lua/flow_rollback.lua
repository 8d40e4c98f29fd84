-- flow_rollback.lua: delete the staged jobs of one queue of a flow across queues whose commit record
-- says 'abort' (the producer failed, or died, before committing), with their links to parents of this
-- queue and the outcomes the outbox deferred for them. The caller unlinks parents in other queues first.
-- KEYS: meta, staged, outbox
-- ARGV: epoch, txn ('<coordinator queue>/<txn id>'), then the ids of the staged jobs
-- Replies: {'EPOCH', current epoch or false}, {'OK', how many jobs were deleted now}
local meta, staged, outbox = KEYS[1], KEYS[2], KEYS[3]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local base = base_of(meta)
local me = flow_queue(base)
local found, stray = {}, {}
for i = 3, #ARGV do
  local st = redis.pcall('HMGET', base .. 'job:' .. ARGV[i], 'state', 'flow_txn', 'parents')
  if not st.err and st[1] == 'staged' and st[2] == ARGV[2] then
    found[#found + 1] = {ARGV[i], st[3] or ''}
  elseif st.err or st[1] ~= 'staged' then
    stray[#stray + 1] = ARGV[i]
  end
end
-- nothing above wrote
for _, id in ipairs(stray) do
  redis.call('ZREM', staged, id) -- an entry whose job is not staged any more (lost, or shown) goes
end
for _, each in ipairs(found) do
  local id, parents = each[1], each[2]
  local ref = me .. '/' .. id
  for pref in string.gmatch(parents, '[^,]+') do
    local q, pid = string.match(pref, '^(.*)/(.*)$')
    if q == me then
      redis.call('HDEL', base .. 'children:' .. pid, ref)
      for _, outcome in ipairs({'done', 'dead', 'retried'}) do
        redis.call('ZREM', outbox, outcome .. '|' .. pref .. '|' .. ref)
      end
    end
  end
  for _, name in ipairs({'job:', 'children:', 'deps:', 'failed_for:'}) do
    redis.call('DEL', base .. name .. id)
  end
  redis.call('ZREM', staged, id)
end
return {'OK', #found}
