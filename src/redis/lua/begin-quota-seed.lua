--[[
  Starts seeding a counter's usage in one quota period (engine/quota-seeding.ts): installs an
  accumulator that every increment of the counter in the period adds to from now on, and reads,
  in the same atomic step, the counter's deltas not yet flushed, which PostgreSQL's flushed sum
  then completes. finish-quota-seed.lua adds both to the accumulator.

  KEYS[1] pending deltas     KEYS[2] pending tags
  KEYS[3] in-flight deltas   KEYS[4] in-flight tags
  KEYS[5] in-flight meta     KEYS[6] snapshot count
  KEYS[7] epoch marker       KEYS[8] quota usage
  KEYS[9] quota periods      KEYS[10] quota seeding markers
  ARGV[1] counter   ARGV[2] the period, '<startMs>,<endMs>'   ARGV[3] the seeder's nonce
  ARGV[4] how old (ms, Redis' clock) another seeder's marker must be to be taken over
  ARGV[5] the most periods a counter may list at once

  Returns {NEEDS_REBUILD} when the totals lack the PostgreSQL base (nothing to seed from yet),
  {SEEDED} when the period's usage is already whole, {SEED_BUSY} while another seeder's marker
  is younger than ARGV[4], else {OK} followed by counterDeltas' reply. A counter lists at most
  ARGV[5] periods (every increment of it walks the list): when full, the period that ends first
  is dropped to make room, usage and marker with it (a seed of it under way then starts over).
  A seeder that starts again keeps its nonce, so it takes its own marker over at once; the
  accumulator starts from 0 again, and the old read is void (finish-quota-seed.lua checks the
  snapshot count).
]]
--- @include "statuses"
--- @include "totals-lack-base"
--- @include "server-time-ms"
--- @include "counter-deltas"

if totalsLackBase(KEYS[7]) then
  return { NEEDS_REBUILD }
end

local counter, period, nonce = ARGV[1], ARGV[2], ARGV[3]
local field = period .. '\031' .. counter
local now = serverTimeMs()
local marker = redis.call('HGET', KEYS[10], field)
if marker then
  local owner, started = string.match(marker, '^(.-)|(%d+)$')
  if owner ~= nonce and now - tonumber(started) < tonumber(ARGV[4]) then
    return { SEED_BUSY }
  end
elseif redis.call('HEXISTS', KEYS[8], field) == 1 then
  return { SEEDED }
end

local periods = redis.call('HGET', KEYS[9], counter)
if periods and not string.find(';' .. periods .. ';', ';' .. period .. ';', 1, true) then
  local listed, earliest = {}, nil
  for entry, endMs in string.gmatch(periods, '(-?%d+,(-?%d+))') do
    listed[#listed + 1] = entry
    if earliest == nil or tonumber(endMs) < earliest.endMs then
      earliest = { index = #listed, endMs = tonumber(endMs) }
    end
  end
  if #listed >= tonumber(ARGV[5]) then
    -- Full: the period that ends first makes room (its next increment seeds it again).
    local evicted = table.remove(listed, earliest.index)
    redis.call('HDEL', KEYS[8], evicted .. '\031' .. counter)
    redis.call('HDEL', KEYS[10], evicted .. '\031' .. counter)
  end
  listed[#listed + 1] = period
  periods = table.concat(listed, ';')
elseif not periods then
  periods = period
end
redis.call('HSET', KEYS[8], field, 0)
redis.call('HSET', KEYS[10], field, nonce .. '|' .. now)
redis.call('HSET', KEYS[9], counter, periods)

local reply = counterDeltas(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], counter)
table.insert(reply, 1, OK)
return reply
