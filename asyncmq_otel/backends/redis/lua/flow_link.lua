-- flow_link.lua: record a child (in another queue) of a parent of this queue, before the child is
-- stored there; the child's queue learns the parent's outcome through this queue's outbox.
-- KEYS: meta, job:<parent>
-- ARGV: epoch, parent_id, child ref '<queue>/<id>', the txn of the child's flow when it is staged (or '')
-- Replies: {'EPOCH', current epoch or false}, {'MISSING'} (no such parent, or one staged by another
--          flow: nothing was written),
--          {'OK', found, flow id, new}: found is 'done' (completed: the child need not wait), 'dead'
--          (dead-lettered or cancelled) or 'pending'; the parent's flow id (one without takes its own);
--          new is 1 when this call added the link (the producer removes it if the child is not stored)
local meta, job = KEYS[1], KEYS[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local held = redis.call('HMGET', job, 'state', 'flow_id', 'flow_txn')
local state, flow = held[1], held[2]
if not state or (state == 'staged' and held[3] ~= ARGV[4]) then
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
local new = redis.call('HSET', base_of(meta) .. 'children:' .. ARGV[2], ARGV[3], 1)
redis.call('HSET', job, 'has_children', 1) -- complete.lua looks for children only when this is set
if state == 'failed' or state == 'expired' or state == 'cancelled' then
  return {'OK', 'dead', flow, new}
end
return {'OK', 'pending', flow, new}
