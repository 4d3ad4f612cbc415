--[[
  Reads one counter's not-yet-flushed deltas in one shard, per bucket tag, for usage queries.

  KEYS[1] pending deltas     KEYS[2] pending tags
  KEYS[3] in-flight deltas   KEYS[4] in-flight tags
  KEYS[5] in-flight meta     KEYS[6] snapshot count
  ARGV[1] counter

  Returns {snapshot count, in-flight batch id or '', its snapshot time (ms, '0' for none), P,
  then P pairs (tag, pending delta), then pairs (tag, in-flight delta)}, read atomically; only tags the counter has a delta under, deltas
  as decimal strings. The caller compares the snapshot count after reading PostgreSQL to know
  that no flush moved deltas in between.
]]
--- @include "each-delta"

local counter = ARGV[1]
local inflight = redis.call('HMGET', KEYS[5], 'batch', 'snapshot')
local result = {
  tonumber(redis.call('GET', KEYS[6]) or 0),
  inflight[1] or '',
  inflight[2] or '0',
  0,
}
local function collect(tag, delta)
  result[#result + 1] = tag
  result[#result + 1] = delta
end

local function deltas(hash, tagSet)
  local before = #result
  eachDelta(hash, redis.call('SMEMBERS', tagSet), counter, collect)
  return (#result - before) / 2
end

result[4] = deltas(KEYS[1], KEYS[2])
deltas(KEYS[3], KEYS[4])
return result
