-- rate_limit.lua: set or clear a queue's shared rate limit (claim.lua enforces it).
-- KEYS: meta, rate
-- ARGV: epoch, 'set' | 'clear', limit (set: an integer >= 1), interval_ms (set: an integer >= 1)
-- Replies: {'EPOCH', current epoch or false}, {'OK', 1 when a limit was stored before, else 0}
-- A new limit replaces the old one over the same sliding log of claims (`rate`): claims already made
-- keep counting in their window, so changing a limit lets no burst through. Clearing deletes the log
-- (claims without a limit are not logged, so it would only be stale).
local meta, rate, op = KEYS[1], KEYS[2], ARGV[2]
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
  redis.call('DEL', rate)
else
  return redis.error_reply('ERR rate_limit: unknown operation ' .. tostring(op))
end
return {'OK', old[1] and 1 or 0}
