-- control.lua: pause or resume claims on a queue.
-- KEYS: meta, ready, signal
-- ARGV: epoch, 'pause' or 'resume'
-- Replies: {'EPOCH', current epoch or false}, {'OK'}; resume pushes one wake token per ready job
-- (at least one, at most the signal cap), so idle workers claim at once.
local meta, ready, signal = KEYS[1], KEYS[2], KEYS[3]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
if ARGV[2] == 'pause' then
  redis.call('HSET', meta, 'paused', '1')
else
  redis.call('HDEL', meta, 'paused')
  wake(signal, math.max(redis.call('ZCARD', ready), 1))
end
return {'OK'}
