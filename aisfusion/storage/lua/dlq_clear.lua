-- Runs after dlq_common.lua (aisfusion.storage.dlq joins them).
-- ARGV: "parked" or "all". Returns how many entries it deleted.
if ARGV[1] == 'all' then
    local n = redis.call('ZCARD', age)
    redis.call('DEL', due, leased, parked, age, entry, attempts, err, rowcount, rows)
    return n
end
local ids = redis.call('ZRANGE', parked, 0, -1)
for _, id in ipairs(ids) do delete(id) end
return #ids
