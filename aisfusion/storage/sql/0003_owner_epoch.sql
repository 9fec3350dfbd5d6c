-- The ownership epoch of the worker that decided each position: the revision of the lease it
-- held on the position's log partition (JetStream KV; it only grows). Two workers never own a
-- partition at once, so per vessel, in the order the rows were committed, the epochs never go
-- down: the fault tests check this. (Not in time order: the log is not in time order after a
-- publish retried past an outage, so a new owner may rightly store an older report.)
-- NULL for positions decided without the log (workers.mode = "in_process").
-- Nullable without a default: adding it rewrites nothing.
ALTER TABLE positions ADD COLUMN owner_epoch bigint;
