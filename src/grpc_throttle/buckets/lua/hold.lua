-- A window the server says is full (Clarifai's 11003, an hourly quota used
-- up, perhaps by other clients): hold every new send, from every process on
-- the key, until it frees as the counts see it (TokenBucket.hold_window).
-- Slots handed out already keep their times.
-- KEYS[1]  the bucket hash (not read: it names the slot), KEYS[2] the limits' counts
-- ARGV[1]  the limits of that window ('count:us;...')
-- Returns the microseconds until the hold ends (of this call's or an earlier, longer one).
local now = now_us()
local ws = windows_load(KEYS[2], ARGV[1], now)
local free = ws.hold or now
for _, w in ipairs(ws) do
  free = math.max(free, window_frees(w, now))
end
redis.call('HSET', KEYS[2], 'hold', fmt(free))
windows_store(KEYS[2], ws, now, free)
return fmt(free - now)
