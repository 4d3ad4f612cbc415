--[[
  Reads the not-yet-flushed bucket deltas of one shard, for usage queries.

  KEYS[1] pending buckets   KEYS[2] in-flight buckets   KEYS[3] in-flight meta
  KEYS[4] snapshot count
  ARGV    bucket fields

  Returns {snapshot count, in-flight batch id or '', pending1, in-flight1, pending2, ...}, read
  atomically; deltas as decimal strings (ioredis parses integer replies near 2^53 inexactly).
  The caller compares the snapshot count after reading PostgreSQL to know that no flush moved
  deltas in between. One HGET per field, not HMGET with unpack(ARGV): Lua cannot unpack more
  than about 8,000 values, and a usage query may ask for 10,000 buckets.
]]
local result = {
  tonumber(redis.call('GET', KEYS[4]) or 0),
  redis.call('HGET', KEYS[3], 'batch') or '',
}
for i = 1, #ARGV do
  result[#result + 1] = redis.call('HGET', KEYS[1], ARGV[i]) or '0'
  result[#result + 1] = redis.call('HGET', KEYS[2], ARGV[i]) or '0'
end
return result
