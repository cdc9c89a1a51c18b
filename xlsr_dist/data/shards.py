"""The shard format: Parquet files of prepared utterances, one directory per split.

A split lives in ``<root>/<split>/`` as ``shard-00000-of-00008.parquet`` ... plus ``manifest.json`` (counts, hours,
duration histogram, character set, per-shard row counts and sha256) and, when written by prepare, ``report.json``.
Each shard has the columns ``id`` (string), ``audio`` (16 kHz mono PCM_16 FLAC bytes), ``text`` (normalised
transcript), ``duration`` (float64 seconds) and ``source`` (the original path or reference).

Row groups are small so a reader fetches a few utterances without reading a whole shard; the audio column is stored
uncompressed (FLAC already is), PLAIN-encoded and without statistics, so each FLAC blob sits verbatim in the file.
Next to each shard, ``<shard>.parquet.idx`` (written with it) records where: the byte offset and length of every
row's blob. A reader with a valid index fetches a row's audio with one ranged read instead of decoding a whole row
group of four columns (16x the bytes at 16-row groups). The Parquet file stays the source of truth: the index names
the shard's size and a hash of its footer, every blob read through it is checked (length prefix and ``fLaC``
magic), and a missing, stale or damaged index only means reads take the row-group path. ``write_manifest``
(re)builds missing or stale indexes. Locations are local directories or any fsspec URL
(file://, memory://, s3://, gs://, hf://).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
MANIFEST = "manifest.json"
INDEX_SUFFIX = ".idx"
INDEX_FORMAT = "xlsr_dist.shard-index/1"
_FLAC_MAGIC = b"fLaC"
REPORT = "report.json"
FORMAT = "xlsr_dist.shards/1"
_SHARD_RE = re.compile(r"shard-(\d{5})-of-(\d{5})\.parquet$")
_META_COLUMNS = ["id", "duration", "text"]
_ROW_COLUMNS = ["id", "audio", "text", "duration"]
# Each cached ParquetFile keeps a file handle (and for remote stores a connection): bound it so a reader over
# thousands of shards does not run out of descriptors.
_CACHE_SIZE = 64

# mkstemp creates 0600 files; shards and manifests are meant to be shared, so they get the umask's usual mode.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK

# Counters a test (or a curious user) reads to see how much a reader actually fetched.
IO_STATS: dict[str, int] = {"files_opened": 0, "row_groups_read": 0, "blobs_read": 0, "index_fallbacks": 0}

log = logging.getLogger(__name__)


class ShardError(Exception):
    """A shard location or file is missing, incomplete or not in the shard format."""


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.parquet"


def write_shard(path: str | Path, rows: Sequence[dict[str, Any]], row_group_size: int = ROW_GROUP_SIZE) -> None:
    """Write ``rows`` (dicts with the schema's keys) to a local ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{k: r[k] for k in SCHEMA.names} for r in rows], schema=SCHEMA)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=row_group_size,
            compression={"id": "zstd", "audio": "none", "text": "zstd", "duration": "zstd", "source": "zstd"},
            use_dictionary=["id", "text", "source"],
            # min/max of FLAC bytes are useless and would bloat the footer every reader parses.
            write_statistics=["id", "duration"],
        )
        os.chmod(tmp, _FILE_MODE)
        data = Path(tmp).read_bytes()
        os.replace(tmp, path)  # readers and re-runs take an existing shard file as complete
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # After the shard: until the new index lands, the old one (if any) names another footer and is ignored.
    _write_index(path, data, [r["audio"] for r in rows])


def index_path(shard_path: str | Path) -> str:
    return str(shard_path) + INDEX_SUFFIX


def _footer_digest(read_at: Any, size: int) -> str:
    """sha256 of the Parquet footer and the file size: what identifies a shard's content for its index. The footer
    holds every column chunk's offset and size and the row counts, so a rewritten shard has another footer."""
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
        if not blob or blob[:4] != _FLAC_MAGIC:
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


def _write_index(path: Path, data: bytes, blobs: Sequence[bytes]) -> bool:
    """Write ``path``'s index from its bytes and its rows' blobs; False (and no index) when blobs cannot be located."""
    target = Path(index_path(path))
    where = locate_blobs(data, blobs)
    if where is None:
        log.warning("%s: audio blobs not stored verbatim; no byte index, reads use Parquet row groups", path)
        target.unlink(missing_ok=True)
        return False
    index = {
        "format": INDEX_FORMAT,
        "shard_bytes": len(data),
        "footer_sha256": _footer_digest(lambda off, n: data[off : off + n], len(data)),
        "rows": len(blobs),
        "offsets": where[:, 0].tolist(),
        "lengths": where[:, 1].tolist(),
    }
    _write_bytes_atomic(target, json.dumps(index, separators=(",", ":")).encode())
    return True


def build_index(path: str | Path) -> bool:
    """(Re)build the byte index of a local shard from the file itself; False when its blobs are not verbatim."""
    path = Path(path)
    data = path.read_bytes()
    blobs = pq.read_table(path, columns=["audio"]).column("audio").to_pylist()
    return _write_index(path, data, blobs)


def ensure_index(path: str | Path) -> bool:
    """True when the local shard at ``path`` has a valid byte index afterwards (building it if missing or stale)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        try:
            digest = _footer_digest(lambda off, n: os.pread(f.fileno(), n, off), size)
        except ValueError as e:
            raise ShardError(f"{path} is not a Parquet file: {e}") from e
        index = _load_index(index_path(path), size, digest, pq.ParquetFile(f).metadata.num_rows)
    return index is not None or build_index(path)


def _load_index(url: str, size: int, digest: str, num_rows: int) -> np.ndarray | None:
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


def _fs(location: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(str(location))
    return fs, path


def _unstrip(fs: fsspec.AbstractFileSystem, location: str, path: str) -> str:
    """Give a path listed by ``fs`` back the protocol of ``location`` so it can be opened again later."""
    if "://" not in str(location):
        return path
    return fs.unstrip_protocol(path)


def list_shards(location: str | Path) -> list[str]:
    """Sorted shard paths (local) or URLs (fsspec) of the split at ``location``; checks the set is complete."""
    location = str(location)
    try:
        fs, path = _fs(location)
    except (ImportError, ValueError) as e:
        raise ShardError(f"cannot open shard location {location!r}: {e}") from e
    if path.endswith(".parquet"):
        found = [path] if fs.isfile(path) else []
    else:
        found = fs.glob(path.rstrip("/") + "/shard-*-of-*.parquet")
    found = sorted(p for p in found if _SHARD_RE.search(p))
    if not found:
        raise ShardError(
            f"no shards (shard-NNNNN-of-NNNNN.parquet) at {location!r}; write them with "
            f"`python -m xlsr_dist.prepare --output DIR` and point at DIR/<split>"
        )
    if not path.endswith(".parquet"):
        totals = {int(_SHARD_RE.search(p).group(2)) for p in found}  # type: ignore[union-attr]
        indices = sorted(int(_SHARD_RE.search(p).group(1)) for p in found)  # type: ignore[union-attr]
        if len(totals) != 1 or indices != list(range(next(iter(totals)))):
            raise ShardError(
                f"incomplete or mixed shard set at {location!r}: found {len(found)} files "
                f"({', '.join(Path(p).name for p in found[:4])}{', ...' if len(found) > 4 else ''}) "
                f"but the names promise {sorted(totals)} shards; re-run prepare"
            )
    return [_unstrip(fs, location, p) for p in found]


class _Opened:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        if "://" in path:
            fs, p = _fs(path)
            self.handle: Any = fs.open(p, "rb")
            self.stamp: tuple[int, int] | None = None
            size = getattr(self.handle, "size", None)
            self.size = int(size if size is not None else fs.size(p))
            self.parquet = pq.ParquetFile(self.handle)
        else:
            self.handle = None
            self.fd = os.open(path, os.O_RDONLY)
            st = os.fstat(self.fd)
            self.stamp = (st.st_mtime_ns, st.st_size)
            self.size = int(st.st_size)
            self.parquet = pq.ParquetFile(path, memory_map=False)
        meta = self.parquet.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.num_rows = int(meta.num_rows)
        self.lock = threading.Lock()  # one handle per file: reads through it must not interleave
        # Loaded on the first read_rows: (offset, length) per row or False (no valid index), and the small columns
        # the index path answers from (read_metadata leaves its table here so they are not read twice).
        self.index: np.ndarray | None | bool = None
        self.meta_table: pa.Table | None = None
        self.meta_rows: tuple[list[str], list[str], list[float]] | None = None
        IO_STATS["files_opened"] += 1

    def read_at(self, offset: int, n: int) -> bytes:
        if self.fd is not None:
            return os.pread(self.fd, n, offset)  # positional: threads need no lock
        with self.lock:
            self.handle.seek(offset)
            return bytes(self.handle.read(n))

    def load_index(self) -> np.ndarray | None:
        if self.index is None:
            where = None
            try:
                where = _load_index(
                    index_path(self.path), self.size, _footer_digest(self.read_at, self.size), self.num_rows
                )
            except (OSError, ValueError):
                pass
            if where is None:
                IO_STATS["index_fallbacks"] += 1
            self.index = where if where is not None else False
        return self.index if self.index is not False else None  # type: ignore[return-value]

    def small_columns(self) -> tuple[list[str], list[str], list[float]]:
        if self.meta_rows is None:
            table = self.meta_table
            if table is None:
                with self.lock:
                    table = self.parquet.read(columns=_META_COLUMNS)
            self.meta_rows = (
                table.column("id").to_pylist(),
                table.column("text").to_pylist(),
                table.column("duration").to_pylist(),
            )
            self.meta_table = None
        return self.meta_rows

    def close(self) -> None:
        try:
            self.parquet.close()
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


_cache: OrderedDict[str, _Opened] = OrderedDict()
_cache_pid = os.getpid()
_cache_lock = threading.Lock()


def _open(path: str) -> _Opened:
    """Per-process cache of opened shards, so repeated reads do not re-open files or re-parse footers."""
    global _cache_pid
    path = str(path)
    with _cache_lock:
        if _cache_pid != os.getpid():
            # A forked worker must not share its parent's file offsets or connections.
            _cache.clear()
            _cache_pid = os.getpid()
        opened = _cache.get(path)
    if opened is not None and opened.stamp is not None:
        st = os.stat(path)
        if (st.st_mtime_ns, st.st_size) != opened.stamp:  # rebuilt by a re-run of prepare
            opened = None
    if opened is not None:
        with _cache_lock:
            if path in _cache:
                _cache.move_to_end(path)
        return opened
    # Opened outside the lock: a remote open takes a round trip and threads open different shards in parallel.
    try:
        opened = _Opened(path)
    except (OSError, pa.ArrowException) as e:
        raise ShardError(f"cannot read shard {path}: {e}") from e
    missing = [c for c in _ROW_COLUMNS if c not in opened.parquet.schema_arrow.names]
    if missing:
        opened.close()
        raise ShardError(f"{path} is not an xlsr_dist shard: missing columns {missing}")
    with _cache_lock:
        # An evicted/replaced entry is not closed here: another thread may still be reading through it; its
        # handle is released when the last reference goes.
        _cache[path] = opened
        _cache.move_to_end(path)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return opened


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def read_metadata(shard_paths: Sequence[str]) -> pa.Table:
    """id, duration, text, shard (index into ``shard_paths``), row (within shard) of every utterance; no audio."""
    if not shard_paths:
        raise ShardError("read_metadata: no shard paths given")

    def one(i_path: tuple[int, str]) -> pa.Table:
        i, path = i_path
        opened = _open(path)
        with opened.lock:
            table = opened.parquet.read(columns=_META_COLUMNS)
        if opened.meta_rows is None:
            opened.meta_table = table  # read_rows' byte-index path answers id/text/duration from it
        n = table.num_rows
        return table.append_column("shard", pa.array(np.full(n, i, dtype=np.int32))).append_column(
            "row", pa.array(np.arange(n, dtype=np.int32))
        )

    # Remote stores answer slowly but in parallel; the footers and small columns are tiny.
    workers = min(16, len(shard_paths))
    if workers <= 1:
        tables = [one(x) for x in enumerate(shard_paths)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            tables = list(pool.map(one, enumerate(shard_paths)))
    return pa.concat_tables(tables)


def read_rows(shard_path: str, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Rows ``rows`` of one shard as dicts (id, audio, text, duration), in the order asked.

    With a valid byte index each row's audio is one ranged read; otherwise only the row groups that hold the rows
    are read. Either way the result is the same, byte for byte.
    """
    opened = _open(shard_path)
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


def _read_indexed(opened: _Opened, where: np.ndarray, wanted: np.ndarray) -> list[dict[str, Any]] | None:
    ids, texts, durations = opened.small_columns()
    out = []
    for r in wanted.tolist():
        offset, length = int(where[r, 0]), int(where[r, 1])
        raw = opened.read_at(offset - 4, length + 4)
        IO_STATS["blobs_read"] += 1
        if len(raw) != length + 4 or struct.unpack("<I", raw[:4])[0] != length or raw[4:8] != _FLAC_MAGIC:
            # The index passed its footer check yet points at something else: trust Parquet from now on.
            log.warning(
                "%s: byte index does not match row %d; reading through Parquet row groups instead", opened.path, r
            )
            opened.index = False
            IO_STATS["index_fallbacks"] += 1
            return None
        out.append({"id": ids[r], "audio": raw[4:], "text": texts[r], "duration": durations[r]})
    return out


def _read_row_groups(opened: _Opened, wanted: np.ndarray) -> list[dict[str, Any]]:
    group_of = np.searchsorted(opened.starts, wanted, side="right") - 1
    groups = sorted(set(group_of.tolist()))
    with opened.lock:
        table = opened.parquet.read_row_groups(groups, columns=_ROW_COLUMNS)
        IO_STATS["row_groups_read"] += len(groups)
    # Position of each wanted row in the concatenation of the fetched groups.
    offset_in_table = {}
    pos = 0
    for g in groups:
        offset_in_table[g] = pos
        pos += int(opened.starts[g + 1] - opened.starts[g])
    take = [offset_in_table[g] + int(r - opened.starts[g]) for g, r in zip(group_of.tolist(), wanted.tolist())]
    return table.take(pa.array(take, type=pa.int64())).to_pylist()


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with fsspec.open(str(path), "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, ensure_ascii=False)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def duration_histogram(durations: Iterable[float], edges: Sequence[float] | None = None) -> dict[str, list]:
    d = np.asarray(list(durations), dtype=np.float64)
    if edges is None:
        top = max(30.0, float(np.ceil(d.max()))) if d.size else 30.0
        edges = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30] + ([top] if top > 30 else [])
    counts, _ = np.histogram(d, bins=np.asarray(edges, dtype=np.float64))
    return {"edges_seconds": [float(e) for e in edges], "counts": counts.tolist()}


def write_manifest(
    split_dir: str | Path, checksums: dict[str, str] | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Summarise the shards of a local split directory into ``manifest.json`` and return it.

    ``checksums`` (shard file name -> sha256) saves hashing files the caller just hashed. Shards without a valid
    byte index (a copy that lost it, an interrupted write, an older prepare) get one here, and indexes of shards
    no longer in the split are removed.
    """
    split_dir = Path(split_dir)
    paths = list_shards(split_dir)
    names = {Path(p).name for p in paths}
    for stale in split_dir.glob("shard-*.parquet" + INDEX_SUFFIX):
        if stale.name[: -len(INDEX_SUFFIX)] not in names:
            stale.unlink()
    indexed = {Path(p).name: ensure_index(p) for p in paths}
    meta = read_metadata(paths)
    durations = meta.column("duration").to_numpy()
    texts = meta.column("text").to_pylist()
    shard_idx = meta.column("shard").to_numpy()
    chars: dict[str, int] = {}
    for t in texts:
        for c in t:
            chars[c] = chars.get(c, 0) + 1
    shards = []
    for i, p in enumerate(paths):
        name = Path(p).name
        sel = shard_idx == i
        shards.append(
            {
                "name": name,
                "rows": int(sel.sum()),
                "seconds": round(float(durations[sel].sum()), 3),
                "bytes": os.path.getsize(p),
                "sha256": (checksums or {}).get(name) or sha256_file(p),
                # An accelerator, not data: readers validate it against the shard and fall back without it.
                "index": name + INDEX_SUFFIX if indexed[name] else None,
            }
        )
    total = float(durations.sum())
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "num_shards": len(paths),
        "num_utterances": int(meta.num_rows),
        "total_seconds": round(total, 3),
        "hours": round(total / 3600.0, 4),
        "duration_seconds": {
            "min": float(durations.min()) if durations.size else 0.0,
            "max": float(durations.max()) if durations.size else 0.0,
            "mean": float(durations.mean()) if durations.size else 0.0,
            "histogram": duration_histogram(durations),
        },
        "vocabulary": "".join(sorted(chars)),
        "character_counts": dict(sorted(chars.items())),
        "shards": shards,
    }
    if extra:
        manifest.update(extra)
    write_json_atomic(split_dir / MANIFEST, manifest)
    return manifest


def read_manifest(split_dir: str | Path) -> dict[str, Any]:
    """The manifest of a split (local directory or fsspec URL)."""
    url = str(split_dir).rstrip("/") + "/" + MANIFEST
    try:
        with fsspec.open(url, "r") as f:
            return dict(json.load(f))
    except FileNotFoundError as e:
        raise ShardError(f"no {MANIFEST} in {split_dir!s}; it is written by `python -m xlsr_dist.prepare`") from e
    except json.JSONDecodeError as e:
        raise ShardError(f"{url} is not valid JSON: {e}") from e


def verify_shard(path: str | Path, rows: int, sha256: str) -> bool:
    """True when the shard file exists with ``rows`` rows and checksum ``sha256``."""
    path = Path(path)
    if not path.is_file():
        return False
    try:
        if pq.ParquetFile(path).metadata.num_rows != rows:
            return False
    except (OSError, pa.ArrowException):
        return False
    return sha256_file(path) == sha256
