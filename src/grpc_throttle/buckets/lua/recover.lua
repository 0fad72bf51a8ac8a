-- A successful answer: raise the shared rate along the curve (_cubic.on_success).
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s), ARGV[2] capacity (tokens)
-- ARGV[3]  scale, ARGV[4] probe_time (s), ARGV[5] the floor (tokens/s)
-- ARGV[6]  the smallest change applied, as a fraction of the rate (MIN_CHANGE)
-- Returns 'now iv rd [since k wm]' (see report).
-- retime never pulls the next slot closer than one new interval to the slots
-- already handed out: a server that allows no burst would refuse it, and every
-- step of the curve would then ask for the next decrease.
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local now = now_us()
local s = load(key, now, rate, nil, tonumber(ARGV[2]))
if s.ld then
  local scale, probe_time, floor, min_change = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local t, k = (now - s.ld) / 1e6, s.k or 0
  local r
  if t < k then
    r = scale * (t - k) ^ 3 + s.wm
  else
    local x = (t - k) / probe_time
    if x >= 1 then
      r = rate
    else
      r = s.wm + (rate - s.wm) * x ^ 3
    end
  end
  local cur = math.min(s.eff or rate, rate)
  if r >= rate then -- back at the configured rate: forget the decrease
    s.eff, s.wm, s.k, s.ld, s.lm = rate, rate, 0, nil, nil
    s.curve_changed = true
  else
    r = math.max(floor, r)
    if r - cur >= min_change * cur then
      s.eff = r
      s.curve_changed = true
    end
  end
  retime(s, now, rate, tonumber(ARGV[2]))
end
if s.rate_changed or s.curve_changed or s.mr then
  store(key, s, now, tonumber(ARGV[2]))
end
return report(s, now)
