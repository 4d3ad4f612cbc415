--[[
  Reads one counter's not-yet-flushed deltas in one shard, per bucket tag, for usage queries.

  KEYS[1] pending deltas     KEYS[2] pending tags
  KEYS[3] in-flight deltas   KEYS[4] in-flight tags
  KEYS[5] in-flight meta     KEYS[6] snapshot count
  ARGV[1] counter

  Returns counterDeltas' reply (includes/counter-deltas.lua).
]]
--- @include "counter-deltas"

return counterDeltas(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], ARGV[1])
