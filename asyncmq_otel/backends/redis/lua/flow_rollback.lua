-- flow_rollback.lua: delete the staged jobs of one queue of a flow across queues whose commit record
-- says 'abort' (the producer failed, or died, before committing), with their links to parents of this
-- queue and the outcomes the outbox deferred for them. The caller unlinks parents in other queues first.
-- KEYS: meta, staged, outbox
-- ARGV: epoch, txn ('<coordinator queue>/<txn id>'), then the ids of the staged jobs
-- Replies: {'EPOCH', current epoch or false}, {'OK', how many jobs were deleted now}
local meta, staged, outbox = KEYS[1], KEYS[2], KEYS[3]
local bad, base, found = staged_begin(meta, staged, 'parents')
if bad then
  return bad
end
local me = flow_queue(base)
for _, each in ipairs(found) do
  local id, parents = each[1], each[2][3] or ''
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
