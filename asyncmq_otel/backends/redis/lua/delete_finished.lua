-- delete_finished.lua: delete finished jobs from one index (clean and purge_dlq), a page at a time.
-- KEYS: meta, index, then the other indexes the deleted ids must leave (e.g. dlq, failed, expired)
-- ARGV: epoch, older_than_ms ('' deletes regardless of age), limit
-- Replies: {'EPOCH', current epoch or false}, {'OK', deleted, more (0 or 1)}
local meta, index = KEYS[1], KEYS[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local limit = tonumber(ARGV[3])
local cutoff = '+inf'
if ARGV[2] ~= '' then
  cutoff = string.format('%d', now_ms() - tonumber(ARGV[2]))
end
local ids, more = page_upto(index, cutoff, limit)
if #ids == 0 then
  return {'OK', 0, 0}
end
local base = base_of(meta)
for _, id in ipairs(ids) do
  redis.call('DEL', base .. 'job:' .. id)
end
for k = 2, #KEYS do
  redis.call('ZREM', KEYS[k], unpack(ids))
end
return {'OK', #ids, more}
