-- Runs after dlq_common.lua (aisfusion.storage.dlq joins them).
-- ARGV: id, now, error, max_attempts, retry time after 1, 2, ... max_attempts-1 failures
-- Returns -1 unknown id, 0 rescheduled, 1 parked.
local id, now = ARGV[1], ARGV[2]
if redis.call('HEXISTS', entry, id) == 0 then return -1 end
if redis.call('ZSCORE', parked, id) then return 1 end
redis.call('HSET', err, id, ARGV[3])
redis.call('ZREM', leased, id)
local n = redis.call('HINCRBY', attempts, id, 1)
if n >= tonumber(ARGV[4]) then
    redis.call('ZREM', due, id)
    redis.call('ZADD', parked, now, id)
    return 1
end
redis.call('ZADD', due, ARGV[4 + n], id)
return 0
