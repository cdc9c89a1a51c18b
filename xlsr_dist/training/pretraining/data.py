"""Pretraining's data: every utterance of a split's shards with usable audio, transcript or not.

The catalog is the training stream's (canonical id order, audio positions for ranged reads) with no labels. The
global batch of step k -- a total of audio seconds (fairseq's max_tokens) or a fixed utterance count, duration
bucketed -- is a pure function of (seed, step) and of the corpus, whatever the world size; each rank reads the audio
of its own micro-batches only.
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
from xlsr_dist.data.partition import epoch_batches, epoch_rng
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


def seconds_batches(
    durations: np.ndarray, seed: int, epoch: int, max_seconds: float, groups: int, bucket_size_multiplier: int
) -> list[np.ndarray]:
    """One epoch's global batches by total audio seconds (fairseq's max_tokens, counted on real audio): permute
    with (seed, epoch), sort windows of about ``bucket_size_multiplier`` batches by duration, cut a batch where the
    next utterance would pass ``max_seconds`` (never below ``groups`` utterances), drop the last partial batch, and
    shuffle the batch order. Index arrays in bucket order (similar durations together)."""
    d = np.asarray(durations, dtype=np.float64)
    rng = epoch_rng(seed, epoch)
    order = rng.permutation(d.size)
    per_batch = max(groups, int(max_seconds / max(float(d.mean()), 1e-9)) if d.size else groups)
    window = per_batch * bucket_size_multiplier
    for start in range(0, order.size, window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.lexsort((chunk, d[chunk]))]
    batches, current, seconds = [], [], 0.0
    for i in order.tolist():
        if len(current) >= groups and seconds + d[i] > max_seconds:
            batches.append(np.array(current, dtype=np.int64))
            current, seconds = [], 0.0
        current.append(i)
        seconds += float(d[i])
    return [batches[k] for k in rng.permutation(len(batches))]


@dataclass(frozen=True)
class PretrainStream:
    """This rank's micro-batches of each optimizer step: step k's global batch is a function of (seed, k).

    Each global batch is cut into ``groups`` = global_batch / micro_batch micro-batches (consecutive runs of it, the
    same on any world size when --per_device_train_batch_size is given); rank r runs groups [r * grad_accum,
    (r + 1) * grad_accum). With ``max_seconds`` > 0 a global batch is a total of audio seconds
    (``seconds_batches``), else --global_batch_size utterances (``partition.epoch_batches``)."""

    catalog: Catalog
    plan: BatchPlan
    rank: int
    seed: int
    bucket_size_multiplier: int
    max_seconds: float = 0.0

    @property
    def groups(self) -> int:
        return self.plan.global_batch // self.plan.micro_batch

    def epoch_plan(self, epoch: int) -> list[np.ndarray]:
        """The global batches of ``epoch`` (catalog indices)."""
        d = self.catalog.durations
        if self.max_seconds > 0:
            return seconds_batches(d, self.seed, epoch, self.max_seconds, self.groups, self.bucket_size_multiplier)
        return list(epoch_batches(d, self.seed, epoch, self.plan.global_batch, self.bucket_size_multiplier))

    @property
    def steps_per_epoch(self) -> int:
        """Steps of the first epoch (the same in every epoch with a fixed utterance count)."""
        return len(self.epoch_plan(0))

    def micro_batches(self, global_batch: np.ndarray) -> list[np.ndarray]:
        """This rank's share of a global batch, as grad_accum index arrays."""
        parts = np.array_split(np.asarray(global_batch), self.groups)
        ga = self.plan.grad_accum
        return parts[self.rank * ga : (self.rank + 1) * ga]

    def steps(self, first: int) -> Iterator[tuple[int, list[Batch]]]:
        """(step, this rank's micro-batches) from step ``first`` (1-based) on; one epoch plan at a time."""
        dataset = UtteranceDataset(self.catalog)
        epoch, before = 0, 0  # steps in the epochs before ``epoch``
        plan = self.epoch_plan(0)
        if not plan:
            raise ValueError("an epoch of this corpus has no global batch")
        step = first
        while True:
            while step - 1 >= before + len(plan):
                before += len(plan)
                epoch += 1
                plan = self.epoch_plan(epoch)
            micro = self.micro_batches(plan[step - 1 - before])
            yield step, [collate(dataset.__getitems__(m.tolist())) for m in micro]
            step += 1
