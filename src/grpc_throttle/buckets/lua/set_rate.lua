-- Store the shared effective rate, carrying the token level over.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the caller's configured rate, ARGV[2] the effective rate (tokens/s)
-- ARGV[3]  capacity (tokens)
-- Returns {rate in force (tokens/s), ep}.
local key = KEYS[1]
local now = now_us()
local s = load(key, now, tonumber(ARGV[1]), tonumber(ARGV[2]))
store(key, s, now, tonumber(ARGV[3]))
return {fmt(1e6 / s.iv), fmt(s.ep)}
