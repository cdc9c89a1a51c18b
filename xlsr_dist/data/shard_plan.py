"""Which items go into which shard, and which shards of an earlier run can be kept.

Items are sorted by id and cut into contiguous shards, so a re-run makes the same plan: into ``--num_shards`` runs
of equal item counts, or (``--shard_size_mb``) wherever a shard's file reaches the target size, which is known only
once its rows are converted. A finished shard leaves a sidecar ``<split>/.prepare/<shard>.json``: the hash of its
plan (its items and the conversion settings), its row count, sha256 and seconds, and the items it skipped. A shard
whose file, row count and checksum match the sidecar of the same plan is kept; anything else is rebuilt, and files
of other plans are removed.

Cut by size, a shard's final name (``shard-00003-of-00012``) waits for the count of shards: it is written as
``shard-00003.parquet`` (``part_name``; no reader lists it) and renamed when the split is done. Its sidecar, named
for the part, also records how many items it took, the target size, whether the target cut it (``full``) and the
file it is in now; a re-run keeps the longest run of leading shards that still match and converts the rest.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

from xlsr_dist.atomic import write_json
from xlsr_dist.data.convert import Settings
from xlsr_dist.data.recipes.items import Item
from xlsr_dist.data.shards import index_path, verify_shard

SIDECAR_DIR = ".prepare"


def shard_bounds(count: int, num_shards: int) -> list[tuple[int, int]]:
    """[start, end) of ``num_shards`` contiguous runs of ``count`` items sorted by id (fewer when there are fewer
    items; one empty run when there are none)."""
    k = max(1, min(num_shards, count))
    return [(i * count // k, (i + 1) * count // k) for i in range(k)]


def plan_digest(settings: Settings) -> Any:
    """A shard's plan hash before its items are added (``add_to_plan``)."""
    return hashlib.sha256(json.dumps(settings.key(), sort_keys=True).encode())


def add_to_plan(digest: Any, item: Item) -> None:
    digest.update(json.dumps([item.id, item.source, item.text, str(item.audio)]).encode())


def plan_hash(items: Iterable[Item], settings: Settings) -> str:
    digest = plan_digest(settings)
    for it in items:
        add_to_plan(digest, it)
    return digest.hexdigest()


def sidecar_path(split_dir: Path, shard_name: str) -> Path:
    return split_dir / SIDECAR_DIR / f"{shard_name}.json"


def write_sidecar(split_dir: Path, shard_name: str, info: dict[str, Any]) -> None:
    """Record a finished shard: ``info`` holds plan, rows, sha256, seconds and skipped."""
    write_json(sidecar_path(split_dir, shard_name), info)


def read_sidecar(split_dir: Path, shard_name: str) -> dict[str, Any] | None:
    try:
        info = json.loads(sidecar_path(split_dir, shard_name).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def reusable_shard(split_dir: Path, shard_name: str, plan: str) -> dict[str, Any] | None:
    """The sidecar of a finished shard made from plan hash ``plan`` whose file still matches it; else None."""
    info = read_sidecar(split_dir, shard_name)
    if info is None or info.get("plan") != plan:
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


def part_name(index: int) -> str:
    """The file a shard cut by size is written to before the number of shards is known."""
    return f"shard-{index:05d}.parquet"


def reusable_part(
    split_dir: Path, index: int, items: Iterator[Item], remaining: int, settings: Settings, target_bytes: int
) -> dict[str, Any] | None:
    """The sidecar of the finished size-cut shard ``index`` when it still holds the next of ``items`` (of which
    ``remaining`` are left) as this run would cut them (same target, same items and settings, a file that matches);
    else None. Takes the shard's items from ``items`` once its sidecar is worth checking against them."""
    info = read_sidecar(split_dir, part_name(index))
    if info is None or info.get("target_bytes") != target_bytes:
        return None
    taken = info.get("items")
    if not isinstance(taken, int) or taken < 1 or taken > remaining:
        return None
    if not info.get("full") and taken != remaining:
        return None  # cut by the end of the items, which now go on
    if info.get("plan") != plan_hash(islice(items, taken), settings):
        return None
    name = str(info.get("file", ""))
    if "/" in name or not verify_shard(split_dir / name, int(info.get("rows", -1)), str(info.get("sha256", ""))):
        return None
    return info


def remove_other_parts(split_dir: Path, keep: set[str], keep_parts: int) -> None:
    """After a split cut by size: delete shards not named in ``keep``, part files and sidecars of parts beyond the
    first ``keep_parts``, other plans' sidecars and temp files of interrupted writes."""
    parts = {part_name(k) for k in range(keep_parts)}
    for p in split_dir.glob("shard-*.parquet"):
        if p.name not in keep:
            p.unlink()
            Path(index_path(p)).unlink(missing_ok=True)
    for p in split_dir.glob(".shard-*.tmp"):
        p.unlink()
    sidecars = split_dir / SIDECAR_DIR
    if sidecars.is_dir():
        for p in sidecars.glob("*.json"):
            if p.name[: -len(".json")] not in parts:
                p.unlink()
