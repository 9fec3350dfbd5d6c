-- Runs after dlq_common.lua (aisfusion.storage.dlq joins them).
-- ARGV: now, id (empty: every scheduled and parked entry). Returns how many it made due.
local now, id = ARGV[1], ARGV[2]
if id ~= '' then
    if redis.call('ZSCORE', parked, id) then
        redis.call('ZREM', parked, id)
        redis.call('ZADD', due, now, id)
        return 1
    end
    local score = redis.call('ZSCORE', due, id)
    if score and tonumber(score) > tonumber(now) then
        redis.call('ZADD', due, now, id)
        return 1
    end
    return 0
end
local moved = 0
for _, ids in ipairs({redis.call('ZRANGEBYSCORE', due, '(' .. now, '+inf'),
                      redis.call('ZRANGE', parked, 0, -1)}) do
    for _, member in ipairs(ids) do
        redis.call('ZADD', due, now, member)
        moved = moved + 1
    end
end
redis.call('DEL', parked)
return moved
