"""Pretraining's data: every utterance of a split's shards with usable audio, transcript or not.

The catalog is the training stream's (canonical id order, audio positions for ranged reads) with no labels; the
global batch of step k is ``partition.epoch_batches``' row for (seed, epoch, step in epoch) -- duration bucketing,
a fixed utterance count per global batch -- so it is a pure function of (seed, step) and of the corpus, whatever the
world size; each rank reads the audio of its own micro-batches only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from xlsr_dist.config import BatchPlan
from xlsr_dist.data import shards
from xlsr_dist.data.catalog import Catalog, PackedStrings
from xlsr_dist.data.collate import Batch, collate
from xlsr_dist.data.partition import epoch_batches, rank_micro_batches, steps_per_epoch
from xlsr_dist.data.problems import DataProblem
from xlsr_dist.data.skip_reasons import DUPLICATE_ID, LONGER_THAN_MAX, SHORTER_THAN_MIN
from xlsr_dist.data.stream import UtteranceDataset


def audio_catalog(location: str, min_seconds: float, max_seconds: float) -> Catalog:
    """The split's utterances within the duration range, in id order, without labels (transcripts are ignored).

    Raises DataProblem (--train_data) when none is left."""
    paths = shards.list_shards(location)
    meta = shards.read_metadata(paths)
    meta = meta.take(
        pc.sort_indices(meta, sort_keys=[("id", "ascending"), ("shard", "ascending"), ("row", "ascending")])
    )
    n = meta.num_rows
    ids = meta.column("id")
    durations = meta.column("duration").to_numpy().astype(np.float64)
    duplicate = np.zeros(n, dtype=bool)
    if n > 1:
        duplicate[1:] = pc.equal(ids.slice(1), ids.slice(0, n - 1)).to_numpy(zero_copy_only=False)
    short, long = ~duplicate & (durations < min_seconds), ~duplicate & (durations > max_seconds)
    keep = np.flatnonzero(~(duplicate | short | long))
    reasons = {DUPLICATE_ID: int(duplicate.sum()), SHORTER_THAN_MIN: int(short.sum()), LONGER_THAN_MAX: int(long.sum())}
    if keep.size == 0:
        said = ", ".join(f"{count} {reason}" for reason, count in reasons.items() if count) or "the split is empty"
        raise DataProblem(
            "--train_data",
            f"--train_data {location}: no usable audio to pretrain on ({n} utterance(s): {said}; the limits are "
            f"--min_duration_in_seconds {min_seconds:g} and --max_duration_in_seconds {max_seconds:g})",
        )
    digests = shards.footer_digests(paths)
    return Catalog(
        ids=PackedStrings.from_arrow(ids.take(pa.array(keep, type=pa.int64()))),
        durations=durations[keep],
        shard=meta.column("shard").to_numpy()[keep].astype(np.int32),
        row=meta.column("row").to_numpy()[keep].astype(np.int32),
        label_flat=np.zeros(0, dtype=np.uint8),
        label_offsets=np.zeros(keep.size + 1, dtype=np.int64),
        blob_offset=meta.column("blob_offset").to_numpy()[keep].astype(np.int64),
        blob_length=meta.column("blob_length").to_numpy()[keep].astype(np.int64),
        shard_paths=list(paths),
        shard_digests=list(digests) or [""] * len(paths),
        report=[],
    )


@dataclass(frozen=True)
class PretrainStream:
    """This rank's micro-batches of each optimizer step: step k's global batch is a function of (seed, k)."""

    catalog: Catalog
    plan: BatchPlan
    rank: int
    seed: int
    bucket_size_multiplier: int

    @property
    def steps_per_epoch(self) -> int:
        return steps_per_epoch(len(self.catalog), self.plan.global_batch)

    def global_batch(self, step: int) -> np.ndarray:
        """Catalog indices of optimizer step ``step`` (1-based) over all ranks."""
        epoch, index = divmod(step - 1, self.steps_per_epoch)
        d = self.catalog.durations
        return epoch_batches(d, self.seed, epoch, self.plan.global_batch, self.bucket_size_multiplier)[index]

    def steps(self, first: int) -> Iterator[tuple[int, list[Batch]]]:
        """(step, this rank's micro-batches) from step ``first`` on; the epoch plan is made once per epoch."""
        dataset = UtteranceDataset(self.catalog)
        step, plan_epoch, rows = first, -1, np.zeros((0, 0), dtype=np.int64)
        while True:
            epoch, index = divmod(step - 1, self.steps_per_epoch)
            if epoch != plan_epoch:
                d = self.catalog.durations
                rows = epoch_batches(d, self.seed, epoch, self.plan.global_batch, self.bucket_size_multiplier)
                plan_epoch = epoch
            micro = rank_micro_batches(rows[index], self.rank, self.plan)
            yield step, [collate(dataset.__getitems__(m.tolist())) for m in micro]
            step += 1
