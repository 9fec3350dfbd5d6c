-- KEYS (all scripts): due leased parked age entry attempts error rowcount rows
-- Helpers shared by the scripts. Scores travel as the strings Python or Redis formatted
-- (never through a Lua number, which would round them to 14 digits).
local due, leased, parked, age = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local entry, attempts, err, rowcount, rows = KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local function delete(id)
    local n = tonumber(redis.call('HGET', rowcount, id) or '0')
    redis.call('ZREM', due, id)
    redis.call('ZREM', leased, id)
    redis.call('ZREM', parked, id)
    redis.call('ZREM', age, id)
    redis.call('HDEL', entry, id)
    redis.call('HDEL', attempts, id)
    redis.call('HDEL', err, id)
    redis.call('HDEL', rowcount, id)
    if redis.call('DECRBY', rows, n) <= 0 then redis.call('DEL', rows) end
end
