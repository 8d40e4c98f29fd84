-- publish.lua: publish a worker's batch of lifecycle events, in order, in one call. A script rather
-- than a pipeline because Redis Cluster clients cannot pipeline PUBLISH (it has no key to route by).
-- KEYS: events channel
-- ARGV: the JSON messages
-- Replies: the number of messages published
local channel = KEYS[1]
for i = 1, #ARGV do
  redis.call('PUBLISH', channel, ARGV[i])
end
return #ARGV
