--[[
  Reads the not-yet-flushed bucket deltas of one shard, for usage queries.

  KEYS[1] pending buckets   KEYS[2] in-flight buckets   KEYS[3] in-flight meta
  KEYS[4] snapshot count
  ARGV    bucket fields

  Returns {snapshot count, in-flight batch id or '', pending1, in-flight1, pending2, ...}, read
  atomically; deltas as decimal strings (ioredis parses integer replies near 2^53 inexactly). The caller compares the snapshot count after reading PostgreSQL to know that no
  flush moved deltas in between.
]]
local result = {
  tonumber(redis.call('GET', KEYS[4]) or 0),
  redis.call('HGET', KEYS[3], 'batch') or '',
}
local pending = redis.call('HMGET', KEYS[1], unpack(ARGV))
local inflight = redis.call('HMGET', KEYS[2], unpack(ARGV))
for i = 1, #ARGV do
  result[#result + 1] = pending[i] or '0'
  result[#result + 1] = inflight[i] or '0'
end
return result
