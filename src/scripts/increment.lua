--[[
  Applies a group of increments to one shard, in order, each one whole or not at all.

  KEYS[1] epoch marker      KEYS[2] totals            KEYS[3] pending
  KEYS[4] pending buckets   KEYS[5] pending-since
  KEYS[6..] idempotency keys, referred to by index from ARGV

  ARGV[1] idempotency window, ms
  ARGV[2] G: bucket fields per increment
  ARGV[3..] per increment, 4 + G values: counter, delta, limit ('' for none),
            idempotency key index into KEYS (0 for none), then G pending-bucket fields

  Returns {NEEDS_REBUILD} and applies nothing when the epoch marker is missing: the totals
  would lack the PostgreSQL base. Otherwise {OK, status1, total1, status2, total2, ...} with
  status APPLIED, DUPLICATE, OVER_LIMIT or OVERFLOW and the counter's total after the increment
  (unchanged unless APPLIED), as a decimal string: ioredis parses integer replies near 2^53
  inexactly (it reads 9007199254740991 as 9007199254740992).

  Values are Lua doubles: exact for integers within ±(2^53−1), the range Tally keeps. A sum just
  past the range may round, but never back into it, so the range check is exact.
]]
local OK, NEEDS_REBUILD = 0, 1
local APPLIED, DUPLICATE, OVER_LIMIT, OVERFLOW = 1, 2, 3, 4
local MAX = 9007199254740991

if redis.call('EXISTS', KEYS[1]) == 0 then
  return { NEEDS_REBUILD }
end

local totals, pending, pendingBuckets = KEYS[2], KEYS[3], KEYS[4]
local windowMs = ARGV[1]
local bucketCount = tonumber(ARGV[2])
local result = { OK }
local appliedAny = false

local i = 3
while i <= #ARGV do
  local counter = ARGV[i]
  local delta = tonumber(ARGV[i + 1])
  local limit = ARGV[i + 2]
  local idempotencyIndex = tonumber(ARGV[i + 3])
  local total = tonumber(redis.call('HGET', totals, counter) or 0)
  local status

  if idempotencyIndex > 0 and redis.call('EXISTS', KEYS[idempotencyIndex]) == 1 then
    status = DUPLICATE
  else
    local new = total + delta
    if new > MAX or new < -MAX then
      status = OVERFLOW
    elseif limit ~= '' and new > tonumber(limit) then
      status = OVER_LIMIT
    else
      redis.call('HINCRBY', totals, counter, delta)
      redis.call('HINCRBY', pending, counter, delta)
      for b = 1, bucketCount do
        redis.call('HINCRBY', pendingBuckets, ARGV[i + 3 + b], delta)
      end
      if idempotencyIndex > 0 then
        redis.call('SET', KEYS[idempotencyIndex], '1', 'PX', windowMs)
      end
      status = APPLIED
      total = new
      appliedAny = true
    end
  end

  result[#result + 1] = status
  result[#result + 1] = string.format('%.0f', total)
  i = i + 4 + bucketCount
end

if appliedAny and redis.call('EXISTS', KEYS[5]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[5], now[1] * 1000 + math.floor(now[2] / 1000))
end

return result
