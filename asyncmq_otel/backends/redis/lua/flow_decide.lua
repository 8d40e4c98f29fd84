-- flow_decide.lua: the commit record of a flow across queues (the commit point of add_flow): the first
-- of 'commit' (the producer staged every part) and 'abort' (the producer failed, or a reaper found a
-- part past its deadline) wins; every later call reads it.
-- KEYS: flow:<txn id> (in the hash tag of the flow's first queue)
-- ARGV: wanted ('commit' or 'abort'), ttl_ms (longer than any part can stay staged)
-- Replies: {decision ('commit' or 'abort'), 1 when this call wrote it else 0}
local wrote = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
if wrote then
  return {ARGV[1], 1}
end
return {redis.call('GET', KEYS[1]), 0}
