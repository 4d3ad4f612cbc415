-- A whole number as decimal digits, exact up to 2^53 (ioredis reads integer replies near 2^53
-- inexactly, and tostring would write 1e+15).
local function exactString(n)
  return string.format('%.0f', n)
end
