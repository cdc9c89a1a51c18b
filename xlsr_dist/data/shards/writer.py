"""Writing a shard: rows -> one Parquet file laid out so a reader can fetch a few utterances cheaply, then its index.

Row groups are small (a reader fetches a few utterances without reading a whole shard); the audio column is stored
uncompressed (FLAC already is), PLAIN-encoded and without statistics, so each FLAC blob sits verbatim in the file
where the byte index (``xlsr_dist.data.shards.index``) can point at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from xlsr_dist.atomic import replacing
from xlsr_dist.data.shards.index import write_index
from xlsr_dist.data.shards.schema import ROW_GROUP_SIZE, SCHEMA


def write_shard(path: str | Path, rows: Sequence[dict[str, Any]], row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write ``rows`` (dicts with the schema's keys) to a local ``path`` atomically, then its byte index."""
    path = Path(path)
    table = pa.Table.from_pylist([{k: r[k] for k in SCHEMA.names} for r in rows], schema=SCHEMA)
    # Readers and re-runs take an existing shard file as complete: it appears only once fully written.
    with replacing(path) as tmp:
        pq.write_table(
            table,
            tmp,
            row_group_size=row_group_size,
            compression={"id": "zstd", "audio": "none", "text": "zstd", "duration": "zstd", "source": "zstd"},
            use_dictionary=["id", "text", "source"],
            # min/max of FLAC bytes are useless and would bloat the footer every reader parses.
            write_statistics=["id", "duration"],
        )
        data = tmp.read_bytes()
    # After the shard: until the new index lands, the old one (if any) names another footer and is ignored.
    write_index(path, data, [r["audio"] for r in rows])
