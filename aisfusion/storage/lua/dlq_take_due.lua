-- Runs after dlq_common.lua (aisfusion.storage.dlq joins them).
-- ARGV: now, limit, lease_until, max_attempts, lease_error
-- Returns id, due score, attempts, error, entry blob for every leased entry.
local now, limit, lease_until = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local max_attempts = tonumber(ARGV[4])
local expired = redis.call('ZRANGEBYSCORE', leased, '-inf', now, 'WITHSCORES')
for i = 1, #expired, 2 do
    local id, expiry = expired[i], expired[i + 1]
    redis.call('ZREM', leased, id)
    redis.call('HSET', err, id, ARGV[5])
    if redis.call('HINCRBY', attempts, id, 1) >= max_attempts then
        redis.call('ZADD', parked, expiry, id)
    else
        redis.call('ZADD', due, expiry, id)
    end
end
local ready = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'WITHSCORES', 'LIMIT', 0, limit)
local out = {}
for i = 1, #ready, 2 do
    local id = ready[i]
    redis.call('ZREM', due, id)
    redis.call('ZADD', leased, lease_until, id)
    out[#out + 1] = id
    out[#out + 1] = ready[i + 1]
    out[#out + 1] = redis.call('HGET', attempts, id) or '0'
    out[#out + 1] = redis.call('HGET', err, id) or ''
    out[#out + 1] = redis.call('HGET', entry, id) or ''
end
return out
