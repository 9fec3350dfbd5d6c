-- Runs after dlq_common.lua (aisfusion.storage.dlq joins them).
-- ARGV: id
if redis.call('HEXISTS', entry, ARGV[1]) == 0 then return 0 end
delete(ARGV[1])
return 1
