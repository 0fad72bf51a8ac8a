-- A successful answer: raise the shared rate along the curve (_cubic.on_success).
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s), ARGV[2] capacity (tokens)
-- ARGV[3]  scale, ARGV[4] probe, ARGV[5] the floor (tokens/s)
-- ARGV[6]  the smallest change applied, as a fraction of the rate (MIN_CHANGE)
-- Returns 'now iv rd [since k wm]' (see report).
-- Unlike a rate set on purpose, a recovery step rescales only the burst part
-- of the queue: pulling in slots already handed out would put the next one
-- closer than an interval to the last of them, which a server that allows no
-- burst refuses, and every step of the curve would then ask for the next
-- decrease. (The next slot is due at tat - (capacity - 1) * iv; it must stay
-- one new interval after the last one handed out, tat - capacity * old iv.)
local key = KEYS[1]
local rate = tonumber(ARGV[1])
local now = now_us()
local s = load(key, now, rate, nil)
if s.ld then
  local scale, probe, floor, min_change = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
  local t, k = (now - s.ld) / 1e6, s.k or 0
  local r
  if t < k then
    r = scale * (t - k) ^ 3 + s.wm
  else
    r = s.wm + probe * rate * (t - k)
  end
  local cur = math.min(s.eff or rate, rate)
  if r >= rate then -- back at the configured rate: forget the decrease
    s.eff, s.wm, s.k, s.ld = rate, rate, 0, nil
    s.curve_changed = true
  else
    r = math.max(floor, r)
    if r - cur >= min_change * cur then
      s.eff = r
      s.curve_changed = true
    end
  end
  local tat, iv = s.tat, s.iv
  retime(s, now, rate)
  if s.iv < iv then
    s.tat = math.max(s.tat, tat - tonumber(ARGV[2]) * (iv - s.iv))
  end
end
if s.rate_changed or s.curve_changed then
  store(key, s, now, tonumber(ARGV[2]))
end
return report(s, now)
