-- ensure_queue.lua: create the queue's meta hash with a random epoch, or read the existing one.
-- KEYS: meta
-- ARGV: new_epoch (random 128-bit hex), layout_version
-- Replies: {'OK', epoch} (the existing epoch when meta already had one)
-- A queue created here has `child_flags` = 1: every job of it that has children carries the
-- `has_children` field (see flow_settled_if in _fence.lua); a queue created by an older version
-- lacks the marker, so its completions keep looking for children unconditionally.
local meta = KEYS[1]
if redis.call('HSETNX', meta, 'epoch', ARGV[1]) == 1 then
  redis.call('HSET', meta, 'created_at', now_ms(), 'layout', ARGV[2], 'child_flags', 1)
  return {'OK', ARGV[1]}
end
return {'OK', redis.call('HGET', meta, 'epoch')}
