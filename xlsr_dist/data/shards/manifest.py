"""A split's ``manifest.json``: counts, hours, duration histogram, character set, and per shard its rows, seconds,
size, sha256 and byte index; written from the shards themselves, read from a local directory or any fsspec URL."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xlsr_dist.atomic import write_json
from xlsr_dist.data.shards.index import ensure_index
from xlsr_dist.data.shards.reader import list_shards
from xlsr_dist.data.shards.schema import FORMAT, INDEX_SUFFIX, MANIFEST, ShardError

# Rows of transcripts and durations write_manifest holds at a time.
_MANIFEST_BATCH_ROWS = 8192


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with fsspec.open(str(path), "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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


def duration_histogram(durations: Iterable[float], edges: Sequence[float] | None = None) -> dict[str, list]:
    # An array as it is: a list of a million numpy scalars first was prepare's peak (+48 MB at 1M utterances).
    seconds = np.asarray(durations if isinstance(durations, np.ndarray) else list(durations), dtype=np.float64)
    if edges is None:
        top = max(30.0, float(np.ceil(seconds.max()))) if seconds.size else 30.0
        edges = [0, 1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30] + ([top] if top > 30 else [])
    counts, _ = np.histogram(seconds, bins=np.asarray(edges, dtype=np.float64))
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
    # Shard by shard, a batch of rows at a time: memory holds one batch of transcripts and the durations (8 bytes
    # a row), never the split's text column. Durations stay one array so the sums are numpy's, as they were.
    durations = np.empty(sum(pq.read_metadata(p).num_rows for p in paths), dtype=np.float64)
    chars: Counter[str] = Counter()
    shards = []
    filled = 0
    for p in paths:
        start = filled
        with pq.ParquetFile(p) as parquet:
            for batch in parquet.iter_batches(batch_size=_MANIFEST_BATCH_ROWS, columns=["duration", "text"]):
                durations[filled : filled + batch.num_rows] = batch.column("duration").to_numpy()
                filled += batch.num_rows
                chars.update("".join(batch.column("text").to_pylist()))
        name = Path(p).name
        shards.append(
            {
                "name": name,
                "rows": filled - start,
                "seconds": round(float(durations[start:filled].sum()), 3),
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
        "num_utterances": int(durations.size),
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
    write_json(split_dir / MANIFEST, manifest)
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
