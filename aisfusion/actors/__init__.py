"""pykka actors: shards hosting vessel entities, the batcher, storage writers."""
