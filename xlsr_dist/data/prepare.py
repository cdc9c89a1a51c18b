"""One split of a corpus -> its shards, ``manifest.json`` and ``report.json`` (the work behind
``python -m xlsr_dist.prepare``).

Duplicate ids are dropped (the first entry is kept), the rest planned into shards (``shard_plan``): ``num_shards``
equal runs of the sorted ids, or cut wherever a shard reaches ``shard_size_mb``. Shards a previous run finished for
the same plan are kept, the others converted (``convert``) and streamed into their files row group by row group as
the items come back in order (``shards.ShardWriter``), so memory holds one row group and a few results in flight,
whatever the size of a shard or of the corpus. ``report.json`` names every skipped item with its reason, those
skipped in kept shards included.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from tqdm import tqdm

from xlsr_dist.atomic import write_json
from xlsr_dist.data import language
from xlsr_dist.data.convert import Settings, convert_items
from xlsr_dist.data.recipes.item_store import SplitInput
from xlsr_dist.data.recipes.items import Item, Skip
from xlsr_dist.data.shard_plan import (
    add_to_plan,
    part_name,
    plan_digest,
    plan_hash,
    remove_other_parts,
    remove_other_plans,
    reusable_part,
    reusable_shard,
    shard_bounds,
    write_sidecar,
)
from xlsr_dist.data.shards import REPORT, ShardWriter, WrittenShard, index_path, shard_name, write_manifest
from xlsr_dist.data.skip_reasons import DUPLICATE_ID


def _duplicates(split: SplitInput) -> list[Skip]:
    return [
        Skip(it.id, it.source, DUPLICATE_ID, "listed more than once; the first entry is kept")
        for it in split.items.duplicates()
    ]


def summary_line(prepared: int, seconds: float, num_shards: int, skipped: Sequence[Skip]) -> str:
    line = f"prepared {prepared} utterances ({seconds / 3600:.1f} h) into {num_shards} shards"
    if not skipped:
        return line + "; skipped 0"
    counts = Counter(s.reason for s in skipped)
    return line + f"; skipped {len(skipped)}: " + ", ".join(f"{n} {r}" for r, n in counts.most_common())


DEFAULT_SHARD_SIZE_MB = 256.0
MB = 1 << 20


def _progress(split: SplitInput, total: int, progress: bool) -> tqdm:
    return tqdm(
        total=total,
        desc=f"prepare {split.name}",
        unit="utt",
        disable=not progress or not total,
        mininterval=0.5 if sys.stderr.isatty() else 30.0,
        file=sys.stderr,
    )


def _info(written: WrittenShard, plan: str, skips: Sequence[Skip]) -> dict[str, Any]:
    """A finished shard's sidecar."""
    return {
        "plan": plan,
        "rows": written.rows,
        "sha256": written.sha256,
        "seconds": written.seconds,
        "skipped": [s.as_dict() for s in skips],
    }


def _write_by_count(
    split: SplitInput,
    split_dir: Path,
    num_shards: int,
    num_workers: int,
    settings: Settings,
    force: bool,
    progress: bool,
) -> tuple[list[str], list[dict[str, Any]], int]:
    """``num_shards`` shards of equal item counts; returns their names, sidecars and how many were kept."""
    bounds = shard_bounds(split.items.unique_count(), num_shards)
    names = [shard_name(i, len(bounds)) for i in range(len(bounds))]
    ordered = split.items.ordered()
    plans = [plan_hash(islice(ordered, end - start), settings) for start, end in bounds]
    remove_other_plans(split_dir, set(names))

    done: dict[int, dict[str, Any]] = {}
    for i, name in enumerate(names):
        info = None if force else reusable_shard(split_dir, name, plans[i])
        if info is not None:
            done[i] = info
    todo = [i for i in range(len(bounds)) if i not in done]
    reused = len(done)
    pending = {i: bounds[i][1] - bounds[i][0] for i in todo}

    def tasks() -> Iterator[tuple[int, Item]]:
        items = split.items.ordered()
        for i, (start, end) in enumerate(bounds):
            run = islice(items, end - start)
            if i in pending:
                yield from ((i, it) for it in run)
            else:
                deque(run, maxlen=0)  # a kept shard's items: skipped over

    # Results come back in task order, so shard i's rows arrive together: one shard is open at a time.
    writing: dict[int, ShardWriter] = {}
    skips: list[Skip] = []

    def finish(i: int) -> None:
        written = writing.pop(i).close()
        done[i] = _info(written, plans[i], skips)
        write_sidecar(split_dir, names[i], done[i])
        skips.clear()

    try:
        for i in todo:
            if pending[i] == 0:
                writing[i] = ShardWriter(split_dir / names[i])
                finish(i)
        total = sum(pending.values())
        bar = _progress(split, total, progress)
        for i, result in convert_items(tasks(), total, num_workers, settings, split.row_audio):
            if i not in writing:
                writing[i] = ShardWriter(split_dir / names[i])
            if isinstance(result, Skip):
                skips.append(result)
            else:
                writing[i].write(result)
            pending[i] -= 1
            bar.update(1)
            if pending[i] == 0:
                finish(i)
        bar.close()
    except BaseException as e:
        for writer in writing.values():
            writer.abort(e)
        raise
    return names, [done[i] for i in range(len(bounds))], reused


def _write_by_size(
    split: SplitInput,
    split_dir: Path,
    target_bytes: int,
    num_workers: int,
    settings: Settings,
    force: bool,
    progress: bool,
) -> tuple[list[str], list[dict[str, Any]], int]:
    """Shards cut where their file reaches ``target_bytes``; returns their names, sidecars and how many were kept."""
    count = split.items.unique_count()
    kept = split.items.ordered()
    done: list[dict[str, Any]] = []
    start = 0
    while not force and start < count:
        info = reusable_part(split_dir, len(done), kept, count - start, settings, target_bytes)
        if info is None:
            break
        done.append(info)
        start += int(info["items"])
    reused = len(done)

    writer: ShardWriter | None = None
    skips: list[Skip] = []
    taken = 0
    # The plan hash of the shard being written, fed item by item as its items are handed out.
    plan = plan_digest(settings)

    def finish(full: bool) -> None:
        nonlocal writer, start, taken, plan
        assert writer is not None
        part = part_name(len(done))
        info = _info(writer.close(), plan.hexdigest(), skips)
        info.update(items=taken, target_bytes=target_bytes, full=full, file=part)
        write_sidecar(split_dir, part, info)
        done.append(info)
        writer, start, taken, plan = None, start + taken, 0, plan_digest(settings)
        skips.clear()

    pending: deque[Item] = deque()  # handed to the workers, not yet back: their order is the results'

    def tasks() -> Iterator[tuple[int, Item]]:
        for it in split.items.ordered(start):
            pending.append(it)
            yield 0, it

    try:
        bar = _progress(split, count - start, progress)
        for _, result in convert_items(tasks(), count - start, num_workers, settings, split.row_audio):
            add_to_plan(plan, pending.popleft())
            if writer is None:
                writer = ShardWriter(split_dir / part_name(len(done)))
            taken += 1
            if isinstance(result, Skip):
                skips.append(result)
            else:
                writer.write(result)
            bar.update(1)
            if writer.bytes_written >= target_bytes:
                finish(full=True)
        bar.close()
        if writer is not None or not done:  # the rest, or the one (empty) shard of a split without items
            writer = writer or ShardWriter(split_dir / part_name(len(done)))
            finish(full=False)
    except BaseException as e:
        if writer is not None:
            writer.abort(e)
        raise

    # Now that the count is known, every shard takes its final name; a kept one may have had another count.
    names = [shard_name(k, len(done)) for k in range(len(done))]
    for k, info in enumerate(done):
        if info["file"] != names[k]:
            os.replace(split_dir / info["file"], split_dir / names[k])
            if os.path.exists(index_path(split_dir / info["file"])):
                os.replace(index_path(split_dir / info["file"]), index_path(split_dir / names[k]))
            info["file"] = names[k]
            write_sidecar(split_dir, part_name(k), info)
    remove_other_parts(split_dir, set(names), len(done))
    return names, done, reused


def prepare_split(
    split: SplitInput,
    output: Path,
    num_shards: int | None,
    num_workers: int,
    settings: Settings,
    extra: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    shard_size_mb: float = DEFAULT_SHARD_SIZE_MB,
) -> dict[str, Any]:
    """Write one split's shards, manifest and report; returns the report. ``num_shards`` (when given) fixes the
    number of shards, else they are cut at ``shard_size_mb``."""
    started = time.time()
    split_dir = output / split.name
    split_dir.mkdir(parents=True, exist_ok=True)
    duplicates = _duplicates(split)
    if num_shards is not None:
        names, done, reused = _write_by_count(split, split_dir, num_shards, num_workers, settings, force, progress)
    else:
        target = max(1, int(shard_size_mb * MB))
        names, done, reused = _write_by_size(split, split_dir, target, num_workers, settings, force, progress)

    skipped = split.skipped + duplicates + [Skip(**s) for info in done for s in info["skipped"]]
    skipped.sort(key=lambda s: s.id)
    prepared = sum(int(info["rows"]) for info in done)
    manifest = write_manifest(
        split_dir,
        {name: info["sha256"] for name, info in zip(names, done, strict=True)},
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
        "num_shards": len(names),
        "shard_size_mb": None if num_shards is not None else shard_size_mb,
        "shards_built": len(names) - reused,
        "shards_reused": reused,
        "skipped_by_reason": dict(Counter(s.reason for s in skipped).most_common()),
        "skipped": [s.as_dict() for s in skipped],
        "summary": summary_line(prepared, manifest["total_seconds"], len(names), skipped),
        "elapsed_seconds": round(time.time() - started, 2),
    }
    write_json(split_dir / REPORT, report)
    return report
