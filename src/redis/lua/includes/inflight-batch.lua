-- The id of the shard's in-flight batch, or false when none is in flight.
local function inflightBatch(metaKey)
  return redis.call('HGET', metaKey, 'batch')
end
