-- flow_link.lua: record a child (in another queue) of a parent of this queue, before the child is
-- stored there; the child's queue learns the parent's outcome through this queue's outbox.
-- KEYS: meta, job:<parent>
-- ARGV: epoch, parent_id, child ref '<queue>/<id>'
-- Replies: {'EPOCH', current epoch or false}, {'MISSING'} (no such parent: nothing was written),
--          {'OK', found, flow id}: found is 'done' (completed: the child need not wait), 'dead'
--          (dead-lettered or cancelled) or 'pending'; the parent's flow id (one without takes its own)
local meta, job = KEYS[1], KEYS[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local held = redis.call('HMGET', job, 'state', 'flow_id')
local state, flow = held[1], held[2]
if not state then
  return {'MISSING'}
end
-- nothing above wrote
if not flow then
  flow = ARGV[2]
  redis.call('HSET', job, 'flow_id', flow)
end
if state == 'completed' then
  return {'OK', 'done', flow}
end
redis.call('HSET', base_of(meta) .. 'children:' .. ARGV[2], ARGV[3], 1)
redis.call('HSET', job, 'has_children', 1) -- complete.lua looks for children only when this is set
if state == 'failed' or state == 'expired' or state == 'cancelled' then
  return {'OK', 'dead', flow}
end
return {'OK', 'pending', flow}
