-- flow_deliver.lua: a parent in another queue finished ('done', 'dead') or left the DLQ ('retried');
-- apply it to its child here, as flow_settled / flow_retried do for a child of the parent's queue.
-- Idempotent: the reaper's outbox pass may deliver an entry again after a crash before its removal.
-- KEYS: meta, job:<child>
-- ARGV: epoch, child_id, parent ref '<queue>/<id>', outcome
-- Replies: {'EPOCH', current epoch or false}, {'MISSING'} (the child is not stored, yet or any more),
--          {'STAGED'} (stored by a flow not committed yet),
--          {'BAD_OUTCOME'}, {'OK'}
local meta, job = KEYS[1], KEYS[2]
local id, pref, outcome = ARGV[2], ARGV[3], ARGV[4]
if outcome ~= 'done' and outcome ~= 'dead' and outcome ~= 'retried' then
  return {'BAD_OUTCOME'}
end
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
if redis.call('EXISTS', job) == 0 then
  return {'MISSING'}
end
if redis.pcall('HGET', job, 'state') == 'staged' then
  return {'STAGED'} -- its flow is not committed yet: the entry waits in the outbox
end
-- nothing above wrote
local base = base_of(meta)
local now = now_ms()
if outcome == 'retried' then
  if flow_reblock(base, id, pref) then
    flow_retried(base, id, now)
  end
elseif flow_apply(base, id, pref, outcome, now) then
  flow_settled(base, id, 'dead', now)
end
return {'OK'}
