--- @include "each-delta"

-- One counter's not-yet-flushed deltas in one shard, per bucket tag, read atomically:
-- {snapshot count, in-flight batch id or '', its snapshot time (ms, '0' for none), P, then P
-- pairs (tag, pending delta), then pairs (tag, in-flight delta)}; only tags the counter has a
-- delta under, deltas as decimal strings. The caller compares the snapshot count after reading
-- PostgreSQL to know that no flush moved deltas in between (engine/usage.ts).
local function counterDeltas(pendingKey, pendingTagsKey, inflightKey, inflightTagsKey,
                             inflightMetaKey, snapshotsKey, counter)
  local inflight = redis.call('HMGET', inflightMetaKey, 'batch', 'snapshot')
  local result = {
    tonumber(redis.call('GET', snapshotsKey) or 0),
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
  result[4] = deltas(pendingKey, pendingTagsKey)
  deltas(inflightKey, inflightTagsKey)
  return result
end
