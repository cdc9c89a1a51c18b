"""Which items go into which shard, and which shards of an earlier run can be kept.

Items are sorted by id and cut into contiguous shards, so a re-run makes the same plan. A finished shard leaves a
sidecar ``<split>/.prepare/<shard>.json``: the hash of its plan (its items and the conversion settings), its row
count, sha256 and seconds, and the items it skipped. A shard whose file, row count and checksum match the sidecar
of the same plan is kept; anything else is rebuilt, and files of other plans are removed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xlsr_dist.atomic import write_json
from xlsr_dist.data.convert import Settings
from xlsr_dist.data.recipes.items import Item
from xlsr_dist.data.shards import verify_shard

SIDECAR_DIR = ".prepare"


def plan_shards(items: Sequence[Item], num_shards: int) -> list[list[Item]]:
    """Items sorted by id, cut into ``num_shards`` contiguous runs (fewer when there are fewer items)."""
    ordered = sorted(items, key=lambda it: it.id)
    k = max(1, min(num_shards, len(ordered)))
    n = len(ordered)
    return [ordered[i * n // k : (i + 1) * n // k] for i in range(k)]


def plan_hash(items: Sequence[Item], settings: Settings) -> str:
    digest = hashlib.sha256(json.dumps(settings.key(), sort_keys=True).encode())
    for it in items:
        digest.update(json.dumps([it.id, it.source, it.text, str(it.audio)]).encode())
    return digest.hexdigest()


def sidecar_path(split_dir: Path, shard_name: str) -> Path:
    return split_dir / SIDECAR_DIR / f"{shard_name}.json"


def write_sidecar(split_dir: Path, shard_name: str, info: dict[str, Any]) -> None:
    """Record a finished shard: ``info`` holds plan, rows, sha256, seconds and skipped."""
    write_json(sidecar_path(split_dir, shard_name), info)


def reusable_shard(split_dir: Path, shard_name: str, plan: str) -> dict[str, Any] | None:
    """The sidecar of a finished shard made from plan hash ``plan`` whose file still matches it; else None."""
    try:
        info = json.loads(sidecar_path(split_dir, shard_name).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if info.get("plan") != plan:
        return None
    if not verify_shard(split_dir / shard_name, int(info.get("rows", -1)), str(info.get("sha256", ""))):
        return None
    return dict(info)


def remove_other_plans(split_dir: Path, keep: set[str]) -> None:
    """Delete shards and sidecars not named in ``keep`` (another plan's), and temp files of interrupted writes."""
    for p in split_dir.glob("shard-*.parquet"):
        if p.name not in keep:
            p.unlink()
    for p in split_dir.glob(".shard-*.tmp"):  # left by an interrupted write
        p.unlink()
    sidecars = split_dir / SIDECAR_DIR
    if sidecars.is_dir():
        for p in sidecars.glob("*.json"):
            if p.name[: -len(".json")] not in keep:
                p.unlink()
