--[[
  Flush step 3: forgets the in-flight batch once PostgreSQL holds it, or once an operator
  discarded it.

  KEYS[1] in-flight deltas   KEYS[2] in-flight tags   KEYS[3] in-flight meta
  KEYS[4] in-flight new counters                      KEYS[5] orphan counters
  ARGV[1] batch id
  ARGV[2] '1' when PostgreSQL holds the batch, '0' when it was discarded

  Deletes the batch only if it is still the one in flight (a flush that lost its lock must not
  delete a newer batch). Returns 1 when deleted, 0 when the batch was no longer in flight.

  The batch's new counters are in PostgreSQL once it is applied. A discarded batch's are not:
  they become orphans, which usage queries keep looking up in Redis until a batch with a delta
  of theirs is applied: the first flush after they are counted again. One never counted again
  stays an orphan, a set member queries and this script read; orphans come only from an
  operator's discard of a refused batch, so they stay few.
]]
--- @include "inflight-batch"
--- @include "each-delta"

if inflightBatch(KEYS[3]) ~= ARGV[1] then
  return 0
end
if ARGV[2] == '1' then
  local orphans = redis.call('SMEMBERS', KEYS[5])
  if #orphans > 0 then
    local tags = redis.call('SMEMBERS', KEYS[2])
    local found
    local function mark()
      found = true
    end
    for i = 1, #orphans do
      found = false
      eachDelta(KEYS[1], tags, orphans[i], mark)
      if found then
        redis.call('SREM', KEYS[5], orphans[i])
      end
    end
  end
elseif redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('SUNIONSTORE', KEYS[5], KEYS[5], KEYS[4])
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
return 1
