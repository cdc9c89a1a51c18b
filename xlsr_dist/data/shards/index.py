"""The byte index beside each shard: where every row's FLAC blob sits in the Parquet file.

``<shard>.parquet.idx`` is JSON: the format tag, the shard's size, a sha256 of its Parquet footer (which holds
every column chunk's offset and size, so a rewritten shard has another footer), the row count, and per row the
byte offset and length of its audio blob. With it a reader fetches a row's audio with one ranged read instead of
decoding a row group of four columns. It is an accelerator, not data: an index that names another size or footer,
or that does not parse, is ignored (``load_index`` returns None) and reads take the Parquet row-group path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Sequence
from pathlib import Path

import fsspec
import numpy as np
import pyarrow.parquet as pq

from xlsr_dist.atomic import write_bytes
from xlsr_dist.data.shards.schema import FLAC_MAGIC, INDEX_SUFFIX, ShardError

INDEX_FORMAT = "xlsr_dist.shard-index/1"

log = logging.getLogger(__name__)

ReadAt = Callable[[int, int], bytes]
"""(offset, length) -> the bytes of a file there."""


def index_path(shard_path: str | Path) -> str:
    return str(shard_path) + INDEX_SUFFIX


def footer_digest(read_at: ReadAt, size: int) -> str:
    """sha256 of the Parquet footer and the file size: what identifies a shard's content for its index."""
    if size < 12:
        raise ValueError("too short for Parquet")
    tail = read_at(size - 8, 8)
    if len(tail) != 8 or tail[4:] != b"PAR1":
        raise ValueError("no Parquet footer")
    length = struct.unpack("<I", tail[:4])[0]
    if length > size - 12:
        raise ValueError("footer length out of range")
    footer = read_at(size - 8 - length, length)
    return hashlib.sha256(footer + struct.pack("<Q", size)).hexdigest()


def locate_blobs(data: bytes, blobs: Sequence[bytes]) -> np.ndarray | None:
    """[n, 2] int64 (offset, length) of each FLAC blob in a shard file's bytes, in row order; None when one cannot be
    found verbatim (the column was compressed or dictionary-encoded, or a blob is not FLAC).

    PLAIN byte arrays are a 4-byte little-endian length then the bytes, and row groups (hence blobs) are laid out
    in row order: each search starts where the previous blob ended, so identical blobs map to their own rows.
    """
    out = np.empty((len(blobs), 2), dtype=np.int64)
    pos = 0
    for i, blob in enumerate(blobs):
        if not blob or blob[:4] != FLAC_MAGIC:
            return None
        needle = struct.pack("<I", len(blob)) + blob[:64]
        at = data.find(needle, pos)
        while at >= 0 and data[at + 4 : at + 4 + len(blob)] != blob:
            at = data.find(needle, at + 1)
        if at < 0:
            return None
        out[i] = (at + 4, len(blob))
        pos = at + 4 + len(blob)
    return out


def write_index(path: Path, data: bytes, blobs: Sequence[bytes]) -> bool:
    """Write ``path``'s index from its bytes and its rows' blobs; False (and no index) when blobs cannot be located."""
    where = locate_blobs(data, blobs)
    if where is None:
        remove_index(path)
        return False
    digest = footer_digest(lambda offset, n: data[offset : offset + n], len(data))
    write_index_entries(path, len(data), digest, where[:, 0].tolist(), where[:, 1].tolist())
    return True


def write_index_entries(path: Path, size: int, digest: str, offsets: Sequence[int], lengths: Sequence[int]) -> None:
    """Write the index of the shard at ``path`` (``size`` bytes, footer digest ``digest``) from its rows' blob
    offsets and lengths."""
    index = {
        "format": INDEX_FORMAT,
        "shard_bytes": size,
        "footer_sha256": digest,
        "rows": len(offsets),
        "offsets": list(offsets),
        "lengths": list(lengths),
    }
    write_bytes(index_path(path), json.dumps(index, separators=(",", ":")).encode())


def remove_index(path: Path) -> None:
    """No index for the shard at ``path`` (its blobs are not stored verbatim): reads use Parquet row groups."""
    log.warning("%s: audio blobs not stored verbatim; no byte index, reads use Parquet row groups", path)
    Path(index_path(path)).unlink(missing_ok=True)


def build_index(path: str | Path) -> bool:
    """(Re)build the byte index of a local shard from the file itself; False when its blobs are not verbatim."""
    path = Path(path)
    data = path.read_bytes()
    blobs = pq.read_table(path, columns=["audio"]).column("audio").to_pylist()
    return write_index(path, data, blobs)


def ensure_index(path: str | Path) -> bool:
    """True when the local shard at ``path`` has a valid byte index afterwards (building it if missing or stale)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            digest = footer_digest(lambda offset, n: os.pread(f.fileno(), n, offset), size)
        except ValueError as e:
            raise ShardError(f"{path} is not a Parquet file: {e}") from e
        index = load_index(index_path(path), size, digest, pq.ParquetFile(f).metadata.num_rows)
    return index is not None or build_index(path)


def load_index(url: str, size: int, digest: str, num_rows: int) -> np.ndarray | None:
    """The [rows, 2] (offset, length) array of a valid index at ``url`` for a shard of this size and footer digest;
    None when missing, unreadable or made for other content."""
    try:
        with fsspec.open(url, "rb") as f:
            index = json.loads(f.read())
        where = np.stack(
            [np.asarray(index["offsets"], dtype=np.int64), np.asarray(index["lengths"], dtype=np.int64)], axis=1
        )
    except (OSError, ValueError, KeyError, TypeError):  # missing (FileNotFoundError) or damaged
        return None
    if (
        index.get("format") != INDEX_FORMAT
        or index.get("shard_bytes") != size
        or index.get("footer_sha256") != digest
        or index.get("rows") != num_rows
        or len(where) != num_rows
    ):
        return None
    if num_rows and (where[:, 0].min() < 4 or where[:, 1].min() < 4 or (where.sum(axis=1) > size).any()):
        return None
    return where
