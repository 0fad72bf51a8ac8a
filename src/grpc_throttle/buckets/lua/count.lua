-- Sends made while Redis was unreachable (the fallback's, see _redis_handoff),
-- counted in the limits' windows once it answers again, so that the windows
-- hold them as they hold every other send.
-- KEYS[1]  the bucket hash (not read: it names the slot), KEYS[2] the limits' counts
-- ARGV[1]  the limits ('count:us;...')
-- ARGV[2]  the sends, 'us:tokens;...' on Redis's clock (as the caller maps its own)
-- Returns the number of sends counted.
local now = now_us()
local ws = windows_load(KEYS[2], ARGV[1], now)
local last, n = nil, 0
for t, c in string.gmatch(ARGV[2], '([^:;]+):([^;]+)') do
  t = tonumber(t)
  windows_add(ws, t, tonumber(c))
  last = math.max(last or t, t)
  n = n + 1
end
if last then
  windows_store(KEYS[2], ws, now, last)
end
return n
