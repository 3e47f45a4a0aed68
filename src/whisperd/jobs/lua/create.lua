-- Create a queued job (and its audio, with ARGV[8] = '1') unless that would take its owner
-- (KEYS[8..11], when given) or everyone (KEYS[4..7]) past a cap: then the cap's name, and
-- nothing is written. KEYS: the record, its audio, the owners hash, then for everyone and
-- the owner: index:all, index:queued, index:running, queued_bytes. ARGV: id, score, bytes,
-- the caps (jobs and bytes, in total then per owner), audio?, audio, owner, the fields.
local id, score, bytes = ARGV[1], ARGV[2], tonumber(ARGV[3])
local function over(first, max_jobs, max_bytes)
  local jobs = redis.call('zcard', KEYS[first + 1]) + redis.call('zcard', KEYS[first + 2])
  if jobs >= tonumber(max_jobs) then return 'jobs' end
  local held = tonumber(redis.call('get', KEYS[first + 3])) or 0
  if bytes > 0 and held + bytes > tonumber(max_bytes) then return 'bytes' end
  return nil
end
if #KEYS > 7 then
  local full = over(8, ARGV[6], ARGV[7])
  if full then return 'key_' .. full end
end
local full = over(4, ARGV[4], ARGV[5])
if full then return full end
redis.call('hset', KEYS[1], unpack(ARGV, 11))
if ARGV[8] == '1' then redis.call('set', KEYS[2], ARGV[9]) end
if #KEYS > 7 then redis.call('hset', KEYS[3], id, ARGV[10]) end
for first = 4, #KEYS, 4 do
  redis.call('zadd', KEYS[first], score, id)
  redis.call('zadd', KEYS[first + 1], score, id)
  if bytes > 0 then redis.call('incrby', KEYS[first + 3], bytes) end
end
return 'ok'
