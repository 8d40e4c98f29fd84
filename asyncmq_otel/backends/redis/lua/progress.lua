-- progress.lua: store a running job's progress, fenced on its token like a settle.
-- KEYS: meta, job
-- ARGV: epoch, token, progress
-- Replies: {'EPOCH', current epoch or false}, {'GONE'}, {'STALE', state, owner}, {'OK'}
local meta, job, token = KEYS[1], KEYS[2], ARGV[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
-- a key written over with another type is quarantined and reads as no state: GONE (as in fence)
local st = read_job(job, 'state', 'token', 'owner')
if not st[1] then
  return {'GONE'}
end
if st[1] ~= 'active' or st[2] ~= token then
  return {'STALE', st[1], st[3] or ''}
end
redis.call('HSET', job, 'progress', ARGV[3])
return {'OK'}
