-- rate_limit.lua: set or clear a queue's shared rate limit (claim.lua enforces it).
-- KEYS: meta
-- ARGV: epoch, 'set' | 'clear', limit (set: an integer >= 1), interval_ms (set: an integer >= 1)
-- Replies: {'EPOCH', current epoch or false}, {'OK', 1 when a limit was stored before, else 0}
-- The sliding log of claims (`rate`) is kept: claims already made keep counting in their window
-- under a new limit, so lowering or re-setting a limit never lets a burst through.
local meta, op = KEYS[1], ARGV[2]
local bad, old = epoch_and(meta, ARGV[1], 'rate_limit')
if bad then
  return bad
end
if op == 'set' then
  local limit, interval = int_field(ARGV[3]), int_field(ARGV[4])
  if not limit or limit < 1 or not interval or interval < 1 then
    return redis.error_reply('ERR rate_limit: limit and interval_ms must be integers >= 1')
  end
  redis.call('HSET', meta, 'rate_limit', limit, 'rate_interval', interval)
elseif op == 'clear' then
  redis.call('HDEL', meta, 'rate_limit', 'rate_interval')
else
  return redis.error_reply('ERR rate_limit: unknown operation ' .. tostring(op))
end
return {'OK', old[1] and 1 or 0}
