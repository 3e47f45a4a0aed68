-- Change fields of a record that still exists (never re-create one that expired).
if redis.call('exists', KEYS[1]) == 1 then
  redis.call('hset', KEYS[1], unpack(ARGV))
  return 1
end
return 0
