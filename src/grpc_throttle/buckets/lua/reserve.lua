-- Reserve tokens: the GCRA step of _gcra.reserve, plus an optional lease.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s)
-- ARGV[2]  capacity (tokens)
-- ARGV[3]  tokens to take
-- ARGV[4]  longest acceptable wait in microseconds, or -1 for no limit
-- ARGV[5]  extra tokens leased right after these (0 without a lease)
-- ARGV[6]  a shared effective rate to store first, or '' to keep the stored one
-- Returns "granted wait start iv ep start-now" (granted is 1 or 0; times in
-- microseconds): one string is the cheapest reply to send and to parse.
-- A denied reservation leaves the schedule unchanged.
local key = KEYS[1]
local rate, capacity, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_wait, extra = tonumber(ARGV[4]), tonumber(ARGV[5])
local now = now_us()
local s = load(key, now, rate, tonumber(ARGV[6]))
local start = math.max(s.tat, now)
local new_tat = start + tokens * s.iv
local wait = new_tat - capacity * s.iv - now
local granted = 1
if wait <= EPS then
  wait = 0
elseif max_wait >= 0 and wait > max_wait then
  granted = 0
end
if granted == 1 then
  s.tat = new_tat + extra * s.iv
end
if granted == 1 or s.rate_changed then
  store(key, s, now, capacity)
end
return granted .. ' ' .. wait .. ' ' .. fmt(start) .. ' ' .. s.iv .. ' ' .. s.ep .. ' ' .. (start - now)
