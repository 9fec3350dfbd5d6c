"""The durable log between the feeds and the vessels: NATS JetStream.

With ``workers.mode = "jetstream"`` the process that reads the feeds (the front) publishes raw
batches to one subject per partition of the MMSI space (`log`, `publisher`); worker processes
own partitions through leases in a JetStream KV bucket (`leases`), consume them with one
durable pull consumer each and acknowledge a message only once its positions are committed
(`intake`). The front starts the local workers as child processes (`workers`).
"""
