-- Redis' own clock in ms: every process stamps times from one clock.
local function serverTimeMs()
  local now = redis.call('TIME')
  return now[1] * 1000 + math.floor(now[2] / 1000)
end
