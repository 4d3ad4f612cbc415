--[[
  Flush step 3: forgets the in-flight batch once PostgreSQL holds it.

  KEYS[1] in-flight deltas   KEYS[2] in-flight tags   KEYS[3] in-flight meta
  ARGV[1] batch id

  Deletes the batch only if it is still the one in flight (a flush that lost its lock must not
  delete a newer batch). Returns 1 when deleted, 0 when the batch was no longer in flight.
]]
--- @include "inflight-batch"

if inflightBatch(KEYS[3]) ~= ARGV[1] then
  return 0
end
redis.call('UNLINK', KEYS[1], KEYS[2], KEYS[3])
return 1
