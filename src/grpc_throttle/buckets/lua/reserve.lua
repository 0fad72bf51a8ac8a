-- Reserve tokens: the GCRA step of _gcra.reserve, plus an optional lease.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s)
-- ARGV[2]  capacity (tokens)
-- ARGV[3]  tokens to take (default 1)
-- ARGV[4]  longest acceptable wait in microseconds, or -1 for no limit (default)
-- ARGV[5]  extra tokens leased right after these (default 0)
-- ARGV[6]  a shared effective rate to store first, or '' to keep the stored one
-- ARGV[7]  "not before": microseconds from now before which the caller must not
--          be served (its own fallback slots run until then), or absent
-- The common call sends only ARGV[1] and ARGV[2]: every argument costs the
-- client more than the script.
-- Returns "granted wait start iv ep start-now [rd [since k wm]]" (granted is 1
-- or 0; times in microseconds; the adaptation state once the key has one):
-- one string is the cheapest reply to send and to parse. A denied reservation
-- leaves the schedule unchanged.
local key = KEYS[1]
local rate, capacity, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]) or 1
local max_wait, extra = tonumber(ARGV[4]) or -1, tonumber(ARGV[5]) or 0
local now = now_us()
local s = load(key, now, rate, tonumber(ARGV[6]), capacity)
local start = math.max(s.tat, now)
local not_before = tonumber(ARGV[7])
if not_before then -- due one interval after it at the earliest (due = end - capacity * iv)
  start = math.max(start, now + not_before + capacity * s.iv)
end
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
if granted == 1 or s.rate_changed or s.curve_changed or s.mr then
  store(key, s, now, capacity)
end
local reply = granted .. ' ' .. wait .. ' ' .. fmt(start) .. ' ' .. s.iv .. ' ' .. s.ep .. ' ' .. (start - now)
if s.rd then
  return reply .. curve(s, now)
end
return reply
