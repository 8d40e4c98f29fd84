-- flow_staged.lua: the staged jobs of a queue past their deadline (their producer is late or dead), for
-- the reaper to roll forward or back by their flow's commit record. Reads only.
-- KEYS: meta, staged
-- ARGV: epoch, limit
-- Replies: {'EPOCH', current epoch or false}, {'OK', {{id, txn} per job}}; a job whose hash was lost or
--          written over reads with txn '' (its entry alone is dropped by flow_rollback's caller)
local meta, staged = KEYS[1], KEYS[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local base = base_of(meta)
local out = {}
local ids = redis.call('ZRANGEBYSCORE', staged, '-inf', now_ms(), 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local txn = redis.pcall('HGET', base .. 'job:' .. id, 'flow_txn')
  if type(txn) ~= 'string' then
    txn = ''
  end
  out[#out + 1] = {id, txn}
end
return {'OK', out}
