-- Renew a lease held by ARGV[1] (or take it back if it lapsed), while the job (or chunk) it
-- is for still runs on ARGV[1]: never re-create the lease of one that ended. 0 otherwise.
local state, worker = unpack(redis.call('hmget', KEYS[1], 'state', 'worker'))
if state ~= 'running' or worker ~= ARGV[1] then return 0 end
local owner = redis.call('get', KEYS[2])
if owner == false or owner == ARGV[1] then
  redis.call('set', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
