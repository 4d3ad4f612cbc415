--[[
  Reads one counter's not-yet-flushed deltas in one shard, per bucket tag, for usage queries.

  KEYS[1] pending deltas     KEYS[2] pending tags
  KEYS[3] in-flight deltas   KEYS[4] in-flight tags
  KEYS[5] in-flight meta     KEYS[6] snapshot count
  ARGV[1] counter

  Returns {snapshot count, in-flight batch id or '', P, then P pairs (tag, pending delta), then
  pairs (tag, in-flight delta)}, read atomically; only tags the counter has a delta under, deltas
  as decimal strings. The caller compares the snapshot count after reading PostgreSQL to know
  that no flush moved deltas in between.
]]
local counter = ARGV[1]

local function deltas(hash, tagSet, out)
  local tags = redis.call('SMEMBERS', tagSet)
  local found = 0
  for t = 1, #tags do
    local delta = redis.call('HGET', hash, tags[t] .. counter)
    if delta then
      out[#out + 1] = tags[t]
      out[#out + 1] = delta
      found = found + 1
    end
  end
  return found
end

local result = {
  tonumber(redis.call('GET', KEYS[6]) or 0),
  redis.call('HGET', KEYS[5], 'batch') or '',
  0,
}
result[3] = deltas(KEYS[1], KEYS[2], result)
deltas(KEYS[3], KEYS[4], result)
return result
