"""Data: the shard format, corpus preparation, partitioning and streaming of utterances, and the SpecAugment time
masks drawn where a training batch is built (specaugment.py: from seed, epoch and utterance id)."""
