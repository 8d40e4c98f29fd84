#!lua flags=allow-oom
-- renew.lua: active → active with a new lease deadline, for every lease whose token still matches
-- (even past its deadline: only the reaper revokes a lease). allow-oom: at maxmemory the leases
-- of running jobs must still be kept (Redis at maxmemory: renewals carry on); a ZADD on an existing member needs no memory.
-- KEYS: meta, leases
-- ARGV: epoch, lease_ms, then id, token for each lease
-- Replies: {'EPOCH', current epoch or false}, {'OK', status per lease}, status 'OK', 'LOST' or 'CANCEL'
local meta, leases = KEYS[1], KEYS[2]
local bad = epoch_reply(meta, ARGV[1])
if bad then
  return bad
end
local base = base_of(meta)
local deadline = now_ms() + tonumber(ARGV[2])
local out = {}
for i = 3, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  -- pcall: a job key written over with another type answers LOST alone (nothing fails after a write)
  local st = redis.pcall('HMGET', base .. 'job:' .. id, 'state', 'token', 'cancel_requested')
  if st.err or st[1] ~= 'active' or st[2] ~= token then
    out[#out + 1] = 'LOST'
  else
    redis.call('ZADD', leases, 'XX', deadline, id)
    if st[3] == '1' then
      out[#out + 1] = 'CANCEL'
    else
      out[#out + 1] = 'OK'
    end
  end
end
return {'OK', out}
