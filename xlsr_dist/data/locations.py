"""A split's location as a flag gives it (a directory, one shard file, or a URL fsspec reads): its shard files, or a
ConfigError naming the flag. Training's preflight and the evaluate command check their data locations through it,
before any process group exists, so a bad location is one message and exit status 2, not a hang or a traceback."""

from __future__ import annotations

from pathlib import Path

from xlsr_dist.config import ConfigError
from xlsr_dist.data import shards


def shard_paths(flag: str, location: str) -> list[str]:
    """The shard files of the split at ``location``; raises ConfigError naming ``flag`` when there is no such
    location, it holds no complete shard set, or its first shard cannot be read."""
    if "://" not in location and not Path(location).expanduser().exists():
        raise ConfigError([f"{flag} {location}: no such file or directory"], scope="node")
    try:
        paths = shards.list_shards(location)
        shards.read_metadata(paths[:1])
    except Exception as exc:  # noqa: BLE001 - fsspec/pyarrow/cloud errors alike: the location cannot be used
        reason = " ".join((str(exc) or type(exc).__name__).split())[:400]
        raise ConfigError([f"{flag} {location}: {reason}"], scope="node") from None
    return paths
