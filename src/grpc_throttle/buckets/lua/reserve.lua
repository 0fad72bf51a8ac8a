-- Reserve tokens: the GCRA step of _gcra.reserve, plus an optional lease.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s)
-- ARGV[2]  capacity (tokens)
-- ARGV[3]  tokens to take (default 1)
-- ARGV[4]  longest acceptable wait in microseconds, or -1 for no limit (default)
-- ARGV[5]  extra tokens leased right after these (default 0)
-- ARGV[6]  a shared effective rate to store first, or '' to keep the stored one
-- ARGV[7]  "not before": microseconds from now before which the caller must not
--          be served (its own fallback slots run until then), or absent ('')
-- ARGV[8]  the limits ('count:microseconds;...'), or absent; KEYS[2] their counts
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
local ws, at = nil, 0
if ARGV[8] then -- the send, and any leased after it, must fit every window
  ws = windows_load(KEYS[2], ARGV[8], now, windows_scale(s, rate)) -- a cut scales the counts
  local t = now + math.max(wait, 0)
  at = windows_earliest(ws, t, tokens + extra)
  if at > t then -- later than the rate allows: sent at `at`, from the bucket as it is then
    -- (GCRA's TAT' = max(TAT, t) + tokens * iv: the burst refills while the
    -- windows hold the send, so a burst goes out again once a window frees)
    start = math.max(start, at)
    new_tat = start + tokens * s.iv
    wait = at - now
  end
end
local granted = 1
if wait <= EPS then
  wait = 0
elseif max_wait >= 0 and wait > max_wait then
  granted = 0
end
if granted == 1 then
  s.tat = new_tat + extra * s.iv
  if ws then
    windows_add(ws, at, tokens)
    local last = at
    if extra > 0 then -- the leased slots are counted at the last of them
      last = math.max(s.tat - capacity * s.iv, at)
      windows_add(ws, last, extra)
    end
    windows_store(KEYS[2], ws, now, last)
  end
end
if granted == 1 or s.rate_changed or s.curve_changed or s.mr then
  store(key, s, now, capacity)
end
local reply = granted .. ' ' .. wait .. ' ' .. fmt(start) .. ' ' .. s.iv .. ' ' .. s.ep .. ' ' .. (start - now)
if s.rd then
  return reply .. curve(s, now)
end
return reply
