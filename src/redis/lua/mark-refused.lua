--[[
  Marks the shard's in-flight batch refused (its ledger row may have been pruned; see
  engine/ledger-pruning.ts), if it is still ARGV[1]: status and reconcile report it until an
  operator resolves it.

  KEYS[1] in-flight meta
  ARGV[1] batch id    ARGV[2] the shard's ledger horizon, ms
]]
--- @include "inflight-batch"

if inflightBatch(KEYS[1]) == ARGV[1] then
  redis.call('HSET', KEYS[1], 'refused', ARGV[2])
end
return 0
