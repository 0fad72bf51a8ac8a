-- Read the bucket without changing it (_gcra.level).
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate (tokens/s), ARGV[2] capacity (tokens)
-- ARGV[3]  with limits: the limits, KEYS[2] their counts (the least room counts)
-- Returns {tokens available now (negative when queued), 'now iv rd [since k wm]'}.
local key = KEYS[1]
local capacity = tonumber(ARGV[2])
local now = now_us()
local s = load(key, now, tonumber(ARGV[1]), nil, capacity)
local level = capacity
if s.tat > now then
  level = capacity - (s.tat - now) / s.iv
end
if ARGV[3] then
  for _, w in ipairs(windows_load(KEYS[2], ARGV[3], now, windows_scale(s, tonumber(ARGV[1])))) do
    level = math.min(level, window_room(w, now))
  end
end
return {fmt(level), report(s, now)}
