"""Which utterances form each optimizer step, and which rank takes which of them: pure functions, no I/O.

The global batch order of an epoch is a pure function of (durations, seed, epoch, global_batch,
bucket_size_multiplier) over the canonical utterance order (the stream sorts utterances by id first), so it does
not depend on the world size or on how the corpus is cut into shards. A rank then takes a contiguous slice of each
global batch and gradient accumulation cuts that slice into micro-batches; the union over ranks and micro-batches of
step k is therefore the same multiset of utterances for 1, 2, 4 or 8 ranks.

Epoch recipe (duration bucketing with random batch order):
1. permute all utterances with a generator seeded from (seed, epoch);
2. drop the last ``n % global_batch`` of the permutation: the remainder, smaller than one global batch, is skipped
   this epoch only (the permutation changes every epoch, so a different few are skipped each time) and every rank
   gets exactly ``n // global_batch`` steps, so no collective can wait for a rank that has run out;
3. cut the rest into windows of ``global_batch * bucket_size_multiplier`` and sort each window by duration, so the
   utterances of one batch have similar lengths (little padding);
4. cut into global batches and shuffle the batch order, so training does not see lengths grow monotonically.

A SortaGrad epoch (``shortest_first``, Deep Speech 2's curriculum) keeps step 1-2 and then sorts all of the kept
utterances by duration instead: batches run from the shortest utterances to the longest.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xlsr_dist.config import BatchPlan

PADDING_SLOT = -1
"""Index of a padding item in an eval batch: a short silent dummy marked valid=False."""


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of one epoch: independent streams per (seed, epoch), reproducible anywhere."""
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed ({seed}) and epoch ({epoch}) must be >= 0")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))


def steps_per_epoch(num_utterances: int, global_batch: int) -> int:
    return num_utterances // global_batch


def epoch_batches(
    durations: Sequence[float] | np.ndarray,
    seed: int,
    epoch: int,
    global_batch: int,
    bucket_size_multiplier: int,
    shortest_first: bool = False,
) -> np.ndarray:
    """Int array [steps_per_epoch, global_batch] of utterance indices (into ``durations``) for one epoch.

    Each row is sorted by duration (shortest first), so contiguous slices of it (ranks, then micro-batches) hold
    utterances of similar length. ``shortest_first`` orders the rows by duration too (SortaGrad); the utterances
    left out are the same as without it.
    """
    d = np.asarray(durations, dtype=np.float64)
    if global_batch < 1 or bucket_size_multiplier < 1:
        raise ValueError(
            f"global_batch ({global_batch}) and bucket_size_multiplier ({bucket_size_multiplier}) must be >= 1"
        )
    steps = steps_per_epoch(d.size, global_batch)
    if steps == 0:
        return np.zeros((0, global_batch), dtype=np.int64)
    rng = epoch_rng(seed, epoch)
    kept = rng.permutation(d.size)[: steps * global_batch]
    if shortest_first:
        return kept[np.lexsort((kept, d[kept]))].reshape(steps, global_batch)
    window = global_batch * bucket_size_multiplier
    for start in range(0, kept.size, window):
        chunk = kept[start : start + window]
        # Stable sort on (duration, index): equal durations still give one answer on every machine.
        kept[start : start + window] = chunk[np.lexsort((chunk, d[chunk]))]
    batches = kept.reshape(steps, global_batch)
    return batches[rng.permutation(steps)]


def rank_micro_batches(global_batch_indices: np.ndarray, rank: int, plan: BatchPlan) -> list[np.ndarray]:
    """This rank's ``grad_accum`` micro-batches of one global batch: positions [rank*per_rank, (rank+1)*per_rank)
    cut into consecutive runs of ``micro_batch``."""
    row = np.asarray(global_batch_indices)
    if row.shape != (plan.global_batch,):
        raise ValueError(f"a global batch has {plan.global_batch} utterances, got shape {row.shape}")
    if not 0 <= rank < plan.world_size:
        raise ValueError(f"rank {rank} is outside world size {plan.world_size}")
    mine = row[rank * plan.per_rank : (rank + 1) * plan.per_rank]
    return [mine[i * plan.micro_batch : (i + 1) * plan.micro_batch] for i in range(plan.grad_accum)]


def eval_rank_batches(
    durations: Sequence[float] | np.ndarray, world_size: int, rank: int, batch_size: int
) -> list[np.ndarray]:
    """This rank's eval batches: every utterance exactly once over all ranks, the same batch count on every rank.

    Utterances are sorted by duration (little padding) and cut into rounds of ``world_size * batch_size``; rank r
    takes slots [r*batch_size, (r+1)*batch_size) of each round. The last round is spread evenly over the ranks; a
    rank left with nothing in it gets one PADDING_SLOT, so it still runs the same number of forward passes.
    """
    if world_size < 1 or batch_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad eval split: world_size={world_size}, rank={rank}, batch_size={batch_size}")
    d = np.asarray(durations, dtype=np.float64)
    order = np.lexsort((np.arange(d.size), d))
    round_size = world_size * batch_size
    full = d.size // round_size
    batches = [
        order[k * round_size + rank * batch_size : k * round_size + (rank + 1) * batch_size] for k in range(full)
    ]
    rest = order[full * round_size :]
    if rest.size:
        mine = np.array_split(rest, world_size)[rank]
        batches.append(mine if mine.size else np.array([PADDING_SLOT], dtype=np.int64))
    return [b.astype(np.int64) for b in batches]


def padding_fraction(durations: Sequence[float] | np.ndarray, batches: np.ndarray, plan: BatchPlan) -> float:
    """Padded / (padded + real) audio over every micro-batch of an epoch (what the model actually computes on)."""
    d = np.asarray(durations, dtype=np.float64)
    real = padded = 0.0
    for row in batches:
        for rank in range(plan.world_size):
            for micro in rank_micro_batches(row, rank, plan):
                lengths = d[micro]
                real += float(lengths.sum())
                padded += float(lengths.max() * lengths.size - lengths.sum())
    return padded / (padded + real) if real + padded else 0.0


def common_voice_like_durations(
    n: int, seed: int = 0, median_s: float = 4.8, sigma: float = 0.35, lo: float = 1.0, hi: float = 15.0
) -> np.ndarray:
    """Lognormal durations with Common Voice's median (4.8 s), clipped to [1, 15] s, for tests and benchmarks.

    sigma 0.35 puts 90 % of clips between 2.7 and 8.5 s, the bulk of Common Voice's read sentences.
    """
    rng = np.random.default_rng(seed)
    return np.clip(rng.lognormal(np.log(median_s), sigma, n), lo, hi)
