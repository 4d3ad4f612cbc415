-- The shard's totals lack the PostgreSQL base when its epoch marker is missing (Redis lost its
-- data): scripts that read or change totals then return {NEEDS_REBUILD} and touch nothing.
local function totalsLackBase(epochKey)
  return redis.call('EXISTS', epochKey) == 0
end
