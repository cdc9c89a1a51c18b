"""One split of a corpus -> its shards, ``manifest.json`` and ``report.json`` (the work behind
``python -m xlsr_dist.prepare``).

Duplicate ids are dropped (the first entry is kept), the rest planned into shards (``shard_plan``); shards a
previous run finished for the same plan are kept, the others converted (``convert``) and written one after
another as their items come back, so only unfinished shards hold audio in memory. ``report.json`` names every
skipped item with its reason, those skipped in kept shards included.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xlsr_dist.atomic import write_json
from xlsr_dist.data import language
from xlsr_dist.data.convert import Row, Settings, convert_items
from xlsr_dist.data.recipes.items import Item, Skip, SplitInput
from xlsr_dist.data.shard_plan import plan_hash, plan_shards, remove_other_plans, reusable_shard, write_sidecar
from xlsr_dist.data.shards import REPORT, sha256_file, shard_name, write_manifest, write_shard
from xlsr_dist.data.skip_reasons import DUPLICATE_ID


def _drop_duplicates(items: Sequence[Item]) -> tuple[list[Item], list[Skip]]:
    seen: set[str] = set()
    kept, duplicates = [], []
    for it in items:
        if it.id in seen:
            duplicates.append(Skip(it.id, it.source, DUPLICATE_ID, "listed more than once; the first entry is kept"))
        else:
            seen.add(it.id)
            kept.append(it)
    return kept, duplicates


def summary_line(prepared: int, seconds: float, num_shards: int, skipped: Sequence[Skip]) -> str:
    line = f"prepared {prepared} utterances ({seconds / 3600:.1f} h) into {num_shards} shards"
    if not skipped:
        return line + "; skipped 0"
    counts = Counter(s.reason for s in skipped)
    return line + f"; skipped {len(skipped)}: " + ", ".join(f"{n} {r}" for r, n in counts.most_common())


def prepare_split(
    split: SplitInput,
    output: Path,
    num_shards: int,
    num_workers: int,
    settings: Settings,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one split's shards, manifest and report; returns the report."""
    started = time.time()
    split_dir = output / split.name
    split_dir.mkdir(parents=True, exist_ok=True)
    items, duplicates = _drop_duplicates(split.items)
    plan = plan_shards(items, num_shards)
    names = [shard_name(i, len(plan)) for i in range(len(plan))]
    plans = [plan_hash(chunk, settings) for chunk in plan]
    remove_other_plans(split_dir, set(names))

    done: dict[int, dict[str, Any]] = {}
    for i, name in enumerate(names):
        info = None if force else reusable_shard(split_dir, name, plans[i])
        if info is not None:
            done[i] = info
    todo = [i for i in range(len(plan)) if i not in done]
    reused = len(done)
    tasks = [(i, it) for i in todo for it in plan[i]]
    pending = {i: len(plan[i]) for i in todo}
    rows: dict[int, list[Row]] = {i: [] for i in todo}
    skips: dict[int, list[Skip]] = {i: [] for i in todo}

    def finish(i: int) -> None:
        path = split_dir / names[i]
        write_shard(path, rows[i])
        info = {
            "plan": plans[i],
            "rows": len(rows[i]),
            "sha256": sha256_file(path),
            "seconds": sum(r["duration"] for r in rows[i]),
            "skipped": [s.as_dict() for s in skips[i]],
        }
        write_sidecar(split_dir, names[i], info)
        done[i] = info
        del rows[i], skips[i]  # bounded memory: only unfinished shards hold audio

    for i in todo:
        if pending[i] == 0:
            finish(i)
    bar = tqdm(
        total=len(tasks),
        desc=f"prepare {split.name}",
        unit="utt",
        disable=not progress or not tasks,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )
    for i, result in convert_items(tasks, num_workers, settings, split.row_audio):
        if isinstance(result, Skip):
            skips[i].append(result)
        else:
            rows[i].append(result)
        pending[i] -= 1
        bar.update(1)
        if pending[i] == 0:
            finish(i)
    bar.close()

    skipped = split.skipped + duplicates + [Skip(**s) for i in sorted(done) for s in done[i]["skipped"]]
    skipped.sort(key=lambda s: s.id)
    prepared = sum(int(done[i]["rows"]) for i in done)
    manifest = write_manifest(
        split_dir,
        {names[i]: done[i]["sha256"] for i in done},
        extra={
            "split": split.name,
            **(extra or {}),
            "skipped": len(skipped),
            language.MANIFEST_KEY: settings.normalization.to_dict(),
        },
    )
    report = {
        "split": split.name,
        **(extra or {}),
        "settings": settings.key(),
        "num_items": len(split.items) + len(split.skipped),
        "prepared": prepared,
        "hours": manifest["hours"],
        "num_shards": len(plan),
        "shards_built": len(plan) - reused,
        "shards_reused": reused,
        "skipped_by_reason": dict(Counter(s.reason for s in skipped).most_common()),
        "skipped": [s.as_dict() for s in skipped],
        "summary": summary_line(prepared, manifest["total_seconds"], len(plan), skipped),
        "elapsed_seconds": round(time.time() - started, 2),
    }
    write_json(split_dir / REPORT, report)
    return report
