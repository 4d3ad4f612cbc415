--[[
  Applies a group of increments to one shard, in order, each one whole or not at all.

  KEYS[1] epoch marker      KEYS[2] totals            KEYS[3] pending
  KEYS[4] pending buckets   KEYS[5] pending-since
  KEYS[6..] idempotency keys, referred to by index from ARGV

  ARGV[1] idempotency window, ms
  ARGV[2] G: buckets per increment (one per configured granularity)
  ARGV[3] S: bucket sets in the table that follows
  ARGV[4 .. 3 + S*G] the table: per set, G pending-bucket field prefixes (the counter follows)
  then per increment 3 values: counter, delta, spec. The spec is the bucket set's number, or
  for an increment with an idempotency key or a limit 'set:keyIndex:limit' (keyIndex into
  KEYS, 0 for none; limit '' for none).

  Returns {NEEDS_REBUILD} and applies nothing when the epoch marker is missing: the totals
  would lack the PostgreSQL base. Otherwise {OK, status1, total1, status2, total2, ...} with
  status APPLIED, DUPLICATE, OVER_LIMIT or OVERFLOW and the counter's total after the increment
  (unchanged unless APPLIED), as a decimal string: ioredis parses integer replies near 2^53
  inexactly (it reads 9007199254740991 as 9007199254740992).

  Totals stay within ±(2^53−1) and so does each delta: their sum fits Redis's 64-bit integers,
  and as a Lua double it is exact within the range and never rounds back into it from outside,
  so the range check is exact.
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
local setCount = tonumber(ARGV[3])
local result = { OK }
local appliedAny = false

-- Counts the delta into pending and into each bucket of its set.
local function addPending(counter, delta, set)
  redis.call('HINCRBY', pending, counter, delta)
  local first = 3 + (set - 1) * bucketCount
  for b = 1, bucketCount do
    redis.call('HINCRBY', pendingBuckets, ARGV[first + b] .. counter, delta)
  end
end

local i = 4 + setCount * bucketCount
while i <= #ARGV do
  local counter = ARGV[i]
  local delta = tonumber(ARGV[i + 1])
  local spec = ARGV[i + 2]
  local status, total
  local separator = string.find(spec, ':', 1, true)

  if not separator then
    -- A plain increment: add first, check after. It can only leave the range if the total was
    -- already far from 0, so undoing it never leaves a field that was not there.
    local new = redis.call('HINCRBY', totals, counter, delta)
    if new > MAX or new < -MAX then
      status = OVERFLOW
      total = redis.call('HINCRBY', totals, counter, -delta)
    else
      addPending(counter, delta, tonumber(spec))
      status = APPLIED
      total = new
    end
  else
    local set, keyIndex, limit = string.match(spec, '^(%d+):(%d+):(.*)$')
    keyIndex = tonumber(keyIndex)
    total = tonumber(redis.call('HGET', totals, counter) or 0)
    local new = total + delta
    if keyIndex > 0 and redis.call('EXISTS', KEYS[keyIndex]) == 1 then
      status = DUPLICATE
    elseif new > MAX or new < -MAX then
      status = OVERFLOW
    elseif limit ~= '' and new > tonumber(limit) then
      status = OVER_LIMIT
    else
      redis.call('HINCRBY', totals, counter, delta)
      addPending(counter, delta, tonumber(set))
      if keyIndex > 0 then
        redis.call('SET', KEYS[keyIndex], '1', 'PX', windowMs)
      end
      status = APPLIED
      total = new
    end
  end
  if status == APPLIED then appliedAny = true end

  result[#result + 1] = status
  result[#result + 1] = string.format('%.0f', total)
  i = i + 3
end

if appliedAny and redis.call('EXISTS', KEYS[5]) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', KEYS[5], now[1] * 1000 + math.floor(now[2] / 1000))
end

return result
