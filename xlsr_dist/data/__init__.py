"""Data: the shard format, corpus preparation, partitioning and streaming of utterances."""
