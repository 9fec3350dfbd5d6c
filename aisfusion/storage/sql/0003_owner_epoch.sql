-- The ownership epoch of the worker that decided each position: the revision of the lease it
-- held on the position's log partition (JetStream KV; it only grows). Two workers never own a
-- partition at once, so per vessel, in time order, the epochs never go down: the fault tests
-- check this. NULL for positions decided without the log (workers.mode = "in_process").
-- Nullable without a default: adding it rewrites nothing.
ALTER TABLE positions ADD COLUMN owner_epoch bigint;
