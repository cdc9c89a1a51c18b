"""The shard format: Parquet files of prepared utterances, one directory per split.

A split lives in ``<root>/<split>/`` as ``shard-00000-of-00008.parquet`` ... plus ``manifest.json`` (counts, hours,
duration histogram, character set, per-shard row counts and sha256) and, when written by prepare, ``report.json``.
Each shard has the columns ``id`` (string), ``audio`` (16 kHz mono PCM_16 FLAC bytes), ``text`` (normalised
transcript), ``duration`` (float64 seconds) and ``source`` (the original path or reference).

Row groups are small so a reader fetches a few utterances without reading a whole shard; the audio column is stored
uncompressed (FLAC already is) and without statistics. Locations are local directories or any fsspec URL
(file://, memory://, s3://, gs://, hf://).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    pa.field("id", pa.string()),
    pa.field("audio", pa.binary()),
    pa.field("text", pa.string()),
    pa.field("duration", pa.float64()),
    pa.field("source", pa.string()),
])
ROW_GROUP_SIZE = 16
MANIFEST = "manifest.json"
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
IO_STATS: dict[str, int] = {"files_opened": 0, "row_groups_read": 0}


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
            table, tmp,
            row_group_size=row_group_size,
            compression={"id": "zstd", "audio": "none", "text": "zstd", "duration": "zstd", "source": "zstd"},
            use_dictionary=["id", "text", "source"],
            # min/max of FLAC bytes are useless and would bloat the footer every reader parses.
            write_statistics=["id", "duration"],
        )
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)  # readers and re-runs take an existing shard file as complete
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
            f"`python -m xlsr_dist.prepare --output DIR` and point at DIR/<split>")
    if not path.endswith(".parquet"):
        totals = {int(_SHARD_RE.search(p).group(2)) for p in found}  # type: ignore[union-attr]
        indices = sorted(int(_SHARD_RE.search(p).group(1)) for p in found)  # type: ignore[union-attr]
        if len(totals) != 1 or indices != list(range(next(iter(totals)))):
            raise ShardError(
                f"incomplete or mixed shard set at {location!r}: found {len(found)} files "
                f"({', '.join(Path(p).name for p in found[:4])}{', ...' if len(found) > 4 else ''}) "
                f"but the names promise {sorted(totals)} shards; re-run prepare")
    return [_unstrip(fs, location, p) for p in found]


class _Opened:
    def __init__(self, path: str) -> None:
        self.path = path
        if "://" in path:
            fs, p = _fs(path)
            self.handle: Any = fs.open(p, "rb")
            self.stamp: tuple[int, int] | None = None
            self.parquet = pq.ParquetFile(self.handle)
        else:
            self.handle = None
            st = os.stat(path)
            self.stamp = (st.st_mtime_ns, st.st_size)
            self.parquet = pq.ParquetFile(path, memory_map=False)
        meta = self.parquet.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.num_rows = int(meta.num_rows)
        self.lock = threading.Lock()  # one handle per file: reads through it must not interleave
        IO_STATS["files_opened"] += 1

    def close(self) -> None:
        try:
            self.parquet.close()
        finally:
            if self.handle is not None:
                self.handle.close()

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
        n = table.num_rows
        return table.append_column("shard", pa.array(np.full(n, i, dtype=np.int32))).append_column(
            "row", pa.array(np.arange(n, dtype=np.int32)))

    # Remote stores answer slowly but in parallel; the footers and small columns are tiny.
    workers = min(16, len(shard_paths))
    if workers <= 1:
        tables = [one(x) for x in enumerate(shard_paths)]
    else:
        with ThreadPoolExecutor(workers) as pool:
            tables = list(pool.map(one, enumerate(shard_paths)))
    return pa.concat_tables(tables)


def read_rows(shard_path: str, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Rows ``rows`` of one shard as dicts (id, audio, text, duration), in the order asked; reads only the row
    groups that hold them."""
    opened = _open(shard_path)
    wanted = np.asarray(list(rows), dtype=np.int64)
    if wanted.size == 0:
        return []
    if wanted.min() < 0 or wanted.max() >= opened.num_rows:
        raise IndexError(f"{shard_path}: rows {wanted[(wanted < 0) | (wanted >= opened.num_rows)].tolist()} "
                         f"out of range (shard has {opened.num_rows} rows)")
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


def write_manifest(split_dir: str | Path, checksums: dict[str, str] | None = None,
                   extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Summarise the shards of a local split directory into ``manifest.json`` and return it.

    ``checksums`` (shard file name -> sha256) saves hashing files the caller just hashed.
    """
    split_dir = Path(split_dir)
    paths = list_shards(split_dir)
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
        shards.append({
            "name": name,
            "rows": int(sel.sum()),
            "seconds": round(float(durations[sel].sum()), 3),
            "bytes": os.path.getsize(p),
            "sha256": (checksums or {}).get(name) or sha256_file(p),
        })
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
