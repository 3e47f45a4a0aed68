-- Add ARGV[2] to field ARGV[1] of a record that still exists; -1 if it expired.
if redis.call('exists', KEYS[1]) == 1 then
  return redis.call('hincrby', KEYS[1], ARGV[1], ARGV[2])
end
return -1
