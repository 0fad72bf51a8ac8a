-- Store the shared effective rate, carrying the token level over. It holds
-- until changed: successes do not recover from it, a throttle signal lowers it.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate, ARGV[2] the effective rate (tokens/s)
-- ARGV[3]  capacity (tokens)
-- Returns 'now iv rd [since k wm]' (see report).
local key = KEYS[1]
local now = now_us()
local s = load(key, now, tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]))
store(key, s, now, tonumber(ARGV[3]))
return report(s, now)
