"""Writing a shard: rows -> one Parquet file laid out so a reader can fetch a few utterances cheaply, then its index.

Row groups are small (a reader fetches a few utterances without reading a whole shard); the audio column is stored
uncompressed (FLAC already is), PLAIN-encoded and without statistics, so each FLAC blob sits verbatim in the file
where the byte index (``xlsr_dist.data.shards.index``) can point at it.

Rows stream: ``ShardWriter`` holds at most one row group of rows, hashes the bytes as they go to the file (the
manifest's sha256 without reading the file back) and finds each row group's blobs in the bytes just written (the
index without the whole file in memory). Memory is a constant, whatever the shard's size.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from xlsr_dist.atomic import replacing
from xlsr_dist.data.shards.index import footer_digest, locate_blobs, remove_index, write_index_entries
from xlsr_dist.data.shards.schema import FLAC_MAGIC, ROW_GROUP_SIZE, SCHEMA
from xlsr_dist.memory import give_back_freed_memory

# Bytes written but not yet matched to their blobs beyond which the index is given up (write_manifest rebuilds it
# from the file): only reachable if pyarrow ever held a row group's pages back, far above one row group.
_UNMATCHED_LIMIT = 64 << 20


class _HashingFile:
    """The file object pyarrow writes to: passes bytes on to the file, hashes them, and keeps those not yet
    matched to their rows' audio blobs."""

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.unmatched = bytearray()
        self.unmatched_start = 0  # file offset of unmatched[0]
        self.keep_unmatched = True
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.file.write(data)
        self.sha256.update(data)
        self.size += len(data)
        if self.keep_unmatched:
            self.unmatched += data
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.file.flush()

    def writable(self) -> bool:
        return True

    def close(self) -> None:  # pyarrow leaves a handle it was given open; the writer closes the real file
        self.closed = True


@dataclass(frozen=True)
class WrittenShard:
    """What a finished shard is: its rows, total seconds, size and sha256 (the manifest's checksum)."""

    rows: int
    seconds: float
    bytes: int
    sha256: str


class ShardWriter:
    """Rows -> one local shard file, streamed row group by row group, then its byte index; the file appears
    (atomically, ``xlsr_dist.atomic.replacing``) only on ``close``. Use as a context manager: an error inside the
    block leaves no file. ``bytes_written`` is what the file holds so far (the size prepare cuts shards at)."""

    def __init__(self, path: str | Path, row_group_size: int = ROW_GROUP_SIZE) -> None:
        self.path = Path(path)
        self.row_group_size = row_group_size
        self._exit = contextlib.ExitStack()
        # Readers and re-runs take an existing shard file as complete: it appears only once fully written.
        self._tmp = self._exit.enter_context(replacing(self.path))
        self._file = self._exit.enter_context(open(self._tmp, "w+b"))
        self._sink = _HashingFile(self._file)
        self._parquet = pq.ParquetWriter(
            self._sink,
            SCHEMA,
            compression={"id": "zstd", "audio": "none", "text": "zstd", "duration": "zstd", "source": "zstd"},
            use_dictionary=["id", "text", "source"],
            # min/max of FLAC bytes are useless and would bloat the footer every reader parses.
            write_statistics=["id", "duration"],
        )
        self._batch: list[dict[str, Any]] = []
        self._unmatched_blobs: list[bytes] = []
        self._offsets: list[int] = []
        self._lengths: list[int] = []
        self.rows = 0
        self.seconds = 0.0

    @property
    def bytes_written(self) -> int:
        return self._sink.size

    def write(self, row: dict[str, Any]) -> None:
        """Add one row (a dict with the schema's keys); a full row group goes to the file at once."""
        self._batch.append({k: row[k] for k in SCHEMA.names})
        self.rows += 1
        self.seconds += float(row["duration"])
        if len(self._batch) >= self.row_group_size:
            self._flush()

    def _flush(self) -> None:
        if not self._batch:
            return
        self._parquet.write_table(pa.Table.from_pylist(self._batch, schema=SCHEMA), row_group_size=len(self._batch))
        if self._sink.keep_unmatched:
            self._unmatched_blobs += [r["audio"] for r in self._batch]
            self._match_blobs()
        self._batch = []

    def _match_blobs(self) -> None:
        sink = self._sink
        where = locate_blobs(bytes(sink.unmatched), self._unmatched_blobs)
        if where is None:
            # Not (yet) in the bytes written: a blob that is not FLAC never will be, so stop collecting.
            if len(sink.unmatched) > _UNMATCHED_LIMIT or any(b[:4] != FLAC_MAGIC for b in self._unmatched_blobs):
                sink.keep_unmatched = False
                sink.unmatched = bytearray()
            return
        self._offsets += (where[:, 0] + sink.unmatched_start).tolist()
        self._lengths += where[:, 1].tolist()
        consumed = int(where[-1].sum()) if len(where) else 0
        del sink.unmatched[:consumed]
        sink.unmatched_start += consumed
        self._unmatched_blobs = []

    def close(self) -> WrittenShard:
        """Finish the file, move it into place, write its byte index; returns what the manifest records."""
        self._flush()
        self._parquet.close()
        self._file.flush()
        size = self._sink.size
        digest = footer_digest(lambda offset, n: os.pread(self._file.fileno(), n, offset), size)
        indexed = self._sink.keep_unmatched and not self._unmatched_blobs and len(self._offsets) == self.rows
        self._exit.close()
        # The row groups' metadata and the footer built from it (~15 MB for a 256 MB shard of 16-row groups) are
        # freed at this point: given back to the OS here, or each shard's lands elsewhere in a fragmented heap and
        # prepare's RSS grows with the number of shards (+42 % from 10k to 1M utterances untrimmed, BENCHMARKS.md).
        give_back_freed_memory()
        # After the shard: until the new index lands, the old one (if any) names another footer and is ignored.
        if indexed:
            write_index_entries(self.path, size, digest, self._offsets, self._lengths)
        else:
            remove_index(self.path)
        return WrittenShard(self.rows, self.seconds, size, self._sink.sha256.hexdigest())

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if kind is not None:
            self.abort(error)

    def abort(self, error: BaseException | None = None) -> None:
        """Drop the unfinished file (no shard appears)."""
        failure = error or RuntimeError(f"shard {self.path} abandoned")
        try:
            self._parquet.close()
        finally:
            self._exit.__exit__(type(failure), failure, failure.__traceback__)


def write_shard(path: str | Path, rows: Iterable[dict[str, Any]], row_group_size: int = ROW_GROUP_SIZE) -> WrittenShard:
    """Write ``rows`` (dicts with the schema's keys) to a local ``path`` atomically, then its byte index."""
    with ShardWriter(path, row_group_size) as writer:
        for row in rows:
            writer.write(row)
        return writer.close()
