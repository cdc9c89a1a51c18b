"""What a shard is: the Parquet schema, the file names of a split, and the error every shard module raises."""

from __future__ import annotations

import re

import pyarrow as pa

SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("audio", pa.binary()),
        pa.field("text", pa.string()),
        pa.field("duration", pa.float64()),
        pa.field("source", pa.string()),
    ]
)
ROW_GROUP_SIZE = 16
FORMAT = "xlsr_dist.shards/1"
MANIFEST = "manifest.json"
REPORT = "report.json"
INDEX_SUFFIX = ".idx"
SHARD_FILE_PATTERN = re.compile(r"shard-(\d{5})-of-(\d{5})\.parquet$")
# The columns a training reader needs: the small ones (read for every utterance at start-up) and a row's.
METADATA_COLUMNS = ["id", "duration", "text"]
ROW_COLUMNS = ["id", "audio", "text", "duration"]
FLAC_MAGIC = b"fLaC"


class ShardError(Exception):
    """A shard location or file is missing, incomplete or not in the shard format."""


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.parquet"
