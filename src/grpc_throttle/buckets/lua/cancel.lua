-- Give back a reservation's tokens that no later reservation has overtaken
-- (Go x/time/rate's CancelAt): all of them at the tail of the schedule, fewer
-- or none behind later ones, and none once the reservation is due.
-- KEYS[1]  the bucket hash
-- ARGV[1]  the reservation's start, ARGV[2] its end (microseconds)
-- ARGV[3]  the epoch it was made in, ARGV[4] when it becomes due (microseconds)
-- Returns 1 when tokens went back, else 0.
local key = KEYS[1]
local st = redis.call('HMGET', key, 'tat', 'ep')
local tat = tonumber(st[1])
if not tat or tonumber(st[2]) ~= tonumber(ARGV[3]) then
  return 0
end
if tonumber(ARGV[4]) <= now_us() then
  return 0
end
local start, stop = tonumber(ARGV[1]), tonumber(ARGV[2])
local restore = (stop - start) - (tat - stop)
if restore <= EPS then
  return 0
end
redis.call('HSET', key, 'tat', fmt(tat - restore))
return 1
