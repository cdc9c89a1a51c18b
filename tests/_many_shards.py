"""Large synthetic splits written straight to shards (no prepare): what scales is one row of metadata per utterance,
so the audio is a few near-empty clips (~100 bytes of FLAC each) reused, and row groups are large so writing a
million rows takes seconds, not minutes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xlsr_dist.audio import SAMPLE_RATE, encode_flac
from xlsr_dist.config import DataConfig
from xlsr_dist.data import language, shards

WORDS = ("a", "an", "to", "at", "it", "on", "cat", "dog", "sun", "pen", "map", "box")
_CLIP_SECONDS = (0.16, 0.2, 0.24, 0.28)


def write_split(root: Path, utterances: int, num_shards: int, row_group_size: int = 1024) -> str:
    """``utterances`` rows ``u0000000``... over ``num_shards`` shards (round robin, so shard order is not id order),
    with byte indexes and a manifest that records the vocabulary as prepare does; returns the split's path."""
    root.mkdir(parents=True, exist_ok=True)
    clips = [(encode_flac(np.zeros(int(s * SAMPLE_RATE), dtype=np.float32)), s) for s in _CLIP_SECONDS]
    for k in range(num_shards):
        with shards.ShardWriter(root / shards.shard_name(k, num_shards), row_group_size) as writer:
            for i in range(k, utterances, num_shards):
                audio, seconds = clips[i % len(clips)]
                writer.write(
                    {
                        "id": f"u{i:07d}",
                        "audio": audio,
                        "text": WORDS[(i // len(clips)) % len(WORDS)],
                        "duration": seconds,
                        "source": "synthetic",
                    }
                )
            writer.close()
    shards.write_manifest(root, extra={language.MANIFEST_KEY: DataConfig().normalization().to_dict()})
    return str(root)
