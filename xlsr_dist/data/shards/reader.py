"""Reading shards, local or through fsspec: list a split, read every row's small columns, read chosen rows.

Opened shards are kept in a bounded per-process cache (``open_shard``), so repeated reads neither re-open files
nor re-parse footers; a forked worker starts with an empty cache, and a local file rewritten since it was opened
is opened again. ``read_rows`` takes each row's audio through the shard's byte index when it has a valid one and
through the Parquet row groups otherwise; the result is the same, byte for byte.

Training reads through ``read_audio``: ``read_metadata`` lists every row's blob position from the byte indexes once,
the catalog keeps those positions with the shard's footer digest, and a read is then one ranged read per row, with
no index to parse and no small columns to hold in any process (the catalog has ids and labels already).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xlsr_dist.data.shards.index import footer_digest, index_path, load_index
from xlsr_dist.data.shards.schema import (
    FLAC_MAGIC,
    METADATA_COLUMNS,
    ROW_COLUMNS,
    SHARD_FILE_PATTERN,
    ShardError,
)

# Each cached OpenShard keeps a file handle (and for remote stores a connection): bound it so a reader over
# thousands of shards does not run out of descriptors.
_CACHE_SIZE = 64

# Counters a test (or a curious user) reads to see how much a reader actually fetched.
IO_STATS: dict[str, int] = {
    "files_opened": 0,
    "footers_parsed": 0,
    "row_groups_read": 0,
    "blobs_read": 0,
    "index_fallbacks": 0,
}

log = logging.getLogger(__name__)


def filesystem(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem a shard location (local path or fsspec URL) lives on, and its path there."""
    fs, path = fsspec.core.url_to_fs(str(location))
    return fs, path


def _as_openable(fs: fsspec.AbstractFileSystem, location: str, path: str) -> str:
    """A path listed by ``fs`` with the protocol of ``location`` given back, so it can be opened again later."""
    if "://" not in str(location):
        return path
    return fs.unstrip_protocol(path)


def list_shards(location: str | Path) -> list[str]:
    """Sorted shard paths (local) or URLs (fsspec) of the split at ``location``; checks the set is complete."""
    location = str(location)
    try:
        fs, path = filesystem(location)
    except (ImportError, ValueError) as e:
        raise ShardError(f"cannot open shard location {location!r}: {e}") from e
    if path.endswith(".parquet"):
        found = [path] if fs.isfile(path) else []
    else:
        found = fs.glob(path.rstrip("/") + "/shard-*-of-*.parquet")
    found = sorted(p for p in found if SHARD_FILE_PATTERN.search(p))
    if not found:
        raise ShardError(
            f"no shards (shard-NNNNN-of-NNNNN.parquet) at {location!r}; write them with "
            f"`python -m xlsr_dist.prepare --output DIR` and point at DIR/<split>"
        )
    if not path.endswith(".parquet"):
        totals = {int(SHARD_FILE_PATTERN.search(p).group(2)) for p in found}  # type: ignore[union-attr]
        indices = sorted(int(SHARD_FILE_PATTERN.search(p).group(1)) for p in found)  # type: ignore[union-attr]
        if len(totals) != 1 or indices != list(range(next(iter(totals)))):
            raise ShardError(
                f"incomplete or mixed shard set at {location!r}: found {len(found)} files "
                f"({', '.join(Path(p).name for p in found[:4])}{', ...' if len(found) > 4 else ''}) "
                f"but the names promise {sorted(totals)} shards; re-run prepare"
            )
    return [_as_openable(fs, location, p) for p in found]


class OpenShard:
    """One shard file held open: its handle and, once a read needed them, its Parquet footer and row-group starts,
    byte index and small columns."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        if "://" in path:
            fs, fs_path = filesystem(path)
            # No read-ahead cache: fsspec's default (s3fs: 50 MB blocks) turns every ranged read of a row or row
            # group into a download of the whole shard or more; the reads here are already planned (byte index,
            # Parquet column chunks), so each becomes one ranged request of exactly its bytes.
            self.handle: Any = fs.open(fs_path, "rb", cache_type="none")
            # (mtime, size) of a local file when opened; remote files are not checked for rewrites.
            self.stamp: tuple[int, int] | None = None
            size = getattr(self.handle, "size", None)
            self.size = int(size if size is not None else fs.size(fs_path))
        else:
            self.handle = None
            self.fd = os.open(path, os.O_RDONLY)
            st = os.fstat(self.fd)
            self.stamp = (st.st_mtime_ns, st.st_size)
            self.size = int(st.st_size)
        # One handle per file: reads through it must not interleave. Reentrant: the footer is parsed under it on
        # first use, from inside reads that hold it.
        self.lock = threading.RLock()
        self._parquet: pq.ParquetFile | None = None
        self._starts: np.ndarray | None = None
        self._num_rows: int | None = None
        self.digest: str | None = None
        # Loaded on the first read_rows: (offset, length) per row or False (no valid index), and the small columns
        # the index path answers from.
        self.index: np.ndarray | None | bool = None
        # Arrow columns, not Python lists: a str and a float object per row of every shard cost a rank far more.
        self.metadata_rows: tuple[pa.Array, pa.Array, pa.Array] | None = None
        IO_STATS["files_opened"] += 1

    @property
    def parquet(self) -> pq.ParquetFile:
        """The Parquet reader, its footer parsed on first use. Training reads audio at listed positions
        (``read_audio``) and never needs it: a footer of thousands of row groups is megabytes of parsed metadata
        in every process that opens the shard."""
        with self.lock:
            if self._parquet is None:
                try:
                    parquet = (
                        pq.ParquetFile(self.handle)
                        if self.handle is not None
                        else pq.ParquetFile(self.path, memory_map=False)
                    )
                except (OSError, pa.ArrowException) as e:
                    raise ShardError(f"cannot read shard {self.path}: {e}") from e
                missing = [c for c in ROW_COLUMNS if c not in parquet.schema_arrow.names]
                if missing:
                    parquet.close()
                    raise ShardError(f"{self.path} is not an xlsr_dist shard: missing columns {missing}")
                IO_STATS["footers_parsed"] += 1
                meta = parquet.metadata
                sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
                self._starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
                self._num_rows = int(meta.num_rows)
                self._parquet = parquet
            return self._parquet

    def forget_parquet(self) -> None:
        """Drop the parsed footer (it is parsed again if a read needs it); the handle stays open."""
        with self.lock:
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None

    @property
    def starts(self) -> np.ndarray:
        """Row-group starts: [0, rows of group 0, ...], [num_row_groups + 1]."""
        self.parquet  # noqa: B018 -- parses the footer, which sets them
        return self._starts  # type: ignore[return-value]

    @property
    def num_rows(self) -> int:
        if self._num_rows is None:
            self.parquet  # noqa: B018
        return self._num_rows  # type: ignore[return-value]

    def read_at(self, offset: int, n: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, n, offset)  # positional: threads need no lock
        with self.lock:
            self.handle.seek(offset)
            return bytes(self.handle.read(n))

    def footer_digest(self) -> str:
        """What identifies this file's content (``index.footer_digest``): its byte index and the catalog name it."""
        if self.digest is None:
            try:
                self.digest = footer_digest(self.read_at, self.size)
            except ValueError as e:
                raise ShardError(f"{self.path} is not a Parquet file: {e}") from e
        return self.digest

    def load_index(self) -> np.ndarray | None:
        if self.index is None:
            where = None
            try:
                where = load_index(index_path(self.path), self.size, self.footer_digest(), self.num_rows)
            except (OSError, ValueError):
                pass
            if where is None:
                IO_STATS["index_fallbacks"] += 1
            self.index = where if where is not None else False
        return self.index if self.index is not False else None  # type: ignore[return-value]

    def small_columns(self) -> tuple[pa.Array, pa.Array, pa.Array]:
        """(ids, texts, durations) of every row."""
        if self.metadata_rows is None:
            with self.lock:
                table = self.parquet.read(columns=METADATA_COLUMNS)
            self.metadata_rows = (
                table.column("id").combine_chunks(),
                table.column("text").combine_chunks(),
                table.column("duration").combine_chunks(),
            )
        return self.metadata_rows

    def close(self) -> None:
        try:
            self.forget_parquet()
        finally:
            if self.handle is not None:
                self.handle.close()
            if self.fd is not None:
                os.close(self.fd)
                self.fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


_open_shards: OrderedDict[str, OpenShard] = OrderedDict()
_open_shards_pid = os.getpid()
_open_shards_lock = threading.Lock()


def open_shard(path: str) -> OpenShard:
    """The shard at ``path``, opened once per process and kept (least recently used first out)."""
    global _open_shards_pid
    path = str(path)
    with _open_shards_lock:
        if _open_shards_pid != os.getpid():
            # A forked worker must not share its parent's file offsets or connections.
            _open_shards.clear()
            _open_shards_pid = os.getpid()
        opened = _open_shards.get(path)
    if opened is not None and opened.stamp is not None:
        st = os.stat(path)
        if (st.st_mtime_ns, st.st_size) != opened.stamp:  # rebuilt by a re-run of prepare
            opened = None
    if opened is not None:
        with _open_shards_lock:
            if path in _open_shards:
                _open_shards.move_to_end(path)
        return opened
    # Opened outside the lock: a remote open takes a round trip and threads open different shards in parallel.
    try:
        opened = OpenShard(path)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"cannot read shard {path}: {e}") from e
    with _open_shards_lock:
        # An evicted/replaced entry is not closed here: another thread may still be reading through it; its
        # handle is released when the last reference goes.
        _open_shards[path] = opened
        _open_shards.move_to_end(path)
        while len(_open_shards) > _CACHE_SIZE:
            _open_shards.popitem(last=False)
    return opened


def clear_cache() -> None:
    with _open_shards_lock:
        _open_shards.clear()


def read_metadata(shard_paths: Sequence[str]) -> pa.Table:
    """id, duration, text, shard (index into ``shard_paths``), row (within shard), blob_offset and blob_length (where
    the row's audio sits, from the shard's byte index; -1 when it has no valid one) of every utterance; no audio."""
    if not shard_paths:
        raise ShardError("read_metadata: no shard paths given")

    def one(position_and_path: tuple[int, str]) -> pa.Table:
        position, path = position_and_path
        opened = open_shard(path)
        with opened.lock:
            table = opened.parquet.read(columns=METADATA_COLUMNS)
        n = table.num_rows
        where = opened.load_index()
        if where is None:
            where = np.full((n, 2), -1, dtype=np.int64)
        # The parsed index and footer served only to list the rows: training reads through the positions
        # (read_audio), so holding them in the process that listed them would cost it megabytes per shard.
        opened.index = None
        opened.forget_parquet()
        return (
            table.append_column("shard", pa.array(np.full(n, position, dtype=np.int32)))
            .append_column("row", pa.array(np.arange(n, dtype=np.int32)))
            .append_column("blob_offset", pa.array(where[:, 0]))
            .append_column("blob_length", pa.array(where[:, 1]))
        )

    # Remote stores answer slowly but in parallel; the footers and small columns are tiny.
    workers = min(16, len(shard_paths))
    if workers <= 1:
        tables = [one(x) for x in enumerate(shard_paths)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            tables = list(pool.map(one, enumerate(shard_paths)))
    return pa.concat_tables(tables)


def footer_digests(shard_paths: Sequence[str]) -> list[str]:
    """Each shard's footer digest (``index.footer_digest``): ``read_audio`` checks a shard is still that file."""
    return [open_shard(p).footer_digest() for p in shard_paths]


def read_audio(shard_path: str, digest: str, offsets: Sequence[int], lengths: Sequence[int]) -> list[bytes] | None:
    """The audio blobs at ``offsets``/``lengths`` (from ``read_metadata``) of the shard whose footer digest was
    ``digest``; None when one is not where its index said (read the rows through ``read_rows`` instead).

    Raises ShardError when the file is no longer the one the positions were listed from: the rows a plan was made
    from would no longer be there.
    """
    opened = open_shard(shard_path)
    if opened.footer_digest() != digest:
        raise ShardError(
            f"{shard_path} changed after training started (its Parquet footer is not the one its rows were listed "
            f"from); restart the run"
        )
    if opened.index is False:  # a position of this shard already missed its blob here: Parquet from now on
        return None
    out = []
    for offset, length in zip(offsets, lengths):
        blob = _blob_at(opened, int(offset), int(length))
        if blob is None:
            return None
        out.append(blob)
    return out


def _blob_at(opened: OpenShard, offset: int, length: int) -> bytes | None:
    """The FLAC blob the byte index places at ``offset``; None (and the index distrusted from now on) if it is not."""
    raw = opened.read_at(offset - 4, length + 4)
    IO_STATS["blobs_read"] += 1
    if len(raw) != length + 4 or struct.unpack("<I", raw[:4])[0] != length or raw[4:8] != FLAC_MAGIC:
        log.warning(
            "%s: byte index does not match the file at offset %d; reading Parquet row groups", opened.path, offset
        )
        opened.index = False
        IO_STATS["index_fallbacks"] += 1
        return None
    return raw[4:]


def read_rows(shard_path: str, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Rows ``rows`` of one shard as dicts (id, audio, text, duration), in the order asked.

    With a valid byte index each row's audio is one ranged read; otherwise only the row groups that hold the rows
    are read. Either way the result is the same, byte for byte.
    """
    opened = open_shard(shard_path)
    wanted = np.asarray(list(rows), dtype=np.int64)
    if wanted.size == 0:
        return []
    if wanted.min() < 0 or wanted.max() >= opened.num_rows:
        raise IndexError(
            f"{shard_path}: rows {wanted[(wanted < 0) | (wanted >= opened.num_rows)].tolist()} "
            f"out of range (shard has {opened.num_rows} rows)"
        )
    where = opened.load_index()
    if where is not None:
        got = _read_indexed(opened, where, wanted)
        if got is not None:
            return got
    return _read_row_groups(opened, wanted)


def _read_indexed(opened: OpenShard, where: np.ndarray, wanted: np.ndarray) -> list[dict[str, Any]] | None:
    ids, texts, durations = opened.small_columns()
    out = []
    for r in wanted.tolist():
        # An index that passed its footer check yet points at something else: Parquet is trusted from then on.
        blob = _blob_at(opened, int(where[r, 0]), int(where[r, 1]))
        if blob is None:
            return None
        out.append({"id": ids[r].as_py(), "audio": blob, "text": texts[r].as_py(), "duration": durations[r].as_py()})
    return out


def _read_row_groups(opened: OpenShard, wanted: np.ndarray) -> list[dict[str, Any]]:
    group_of = np.searchsorted(opened.starts, wanted, side="right") - 1
    groups = sorted(set(group_of.tolist()))
    with opened.lock:
        table = opened.parquet.read_row_groups(groups, columns=ROW_COLUMNS)
        IO_STATS["row_groups_read"] += len(groups)
    # Position of each wanted row in the concatenation of the fetched groups.
    offset_in_table = {}
    pos = 0
    for g in groups:
        offset_in_table[g] = pos
        pos += int(opened.starts[g + 1] - opened.starts[g])
    take = [offset_in_table[g] + int(r - opened.starts[g]) for g, r in zip(group_of.tolist(), wanted.tolist())]
    return table.take(pa.array(take, type=pa.int64())).to_pylist()
