-- A throttle signal: lower the shared rate (_cubic.on_throttle), once per round.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s), ARGV[2] capacity (tokens)
-- ARGV[3]  the round of the throttled attempt's reservation
-- ARGV[4]  beta, ARGV[5] scale, ARGV[6] headroom, ARGV[7] the floor (tokens/s)
-- ARGV[8]  '1' for fast convergence (a throttle below the last one's rate
--          aims the recovery at rate * (1 + beta) / 2), '0' without
-- Returns 'now iv rd [since k wm]' (see report). A round older than rd is a
-- signal counted already, by this process or another: nothing changes.
local key = KEYS[1]
local rate, round = tonumber(ARGV[1]), tonumber(ARGV[3])
local now = now_us()
local s = load(key, now, rate, nil, tonumber(ARGV[2]))
if round >= (s.rd or 0) then
  local beta, scale, headroom, floor = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
  local cur = math.min(s.eff or rate, rate)
  local new = math.max(floor, cur * beta)
  local peak = cur
  if ARGV[8] == '1' and s.lm and cur < s.lm then
    peak = cur * (1 + beta) / 2
  end
  s.wm = math.max(new, peak * (1 - headroom))
  s.lm = cur
  s.k = ((s.wm - new) / scale) ^ (1 / 3)
  s.eff, s.ld, s.rd = new, now, math.max(s.rd or 0, round) + 1
  s.curve_changed = true
  retime(s, now, rate, tonumber(ARGV[2]))
end
if s.rate_changed or s.curve_changed or s.mr then
  store(key, s, now, tonumber(ARGV[2]))
end
return report(s, now)
