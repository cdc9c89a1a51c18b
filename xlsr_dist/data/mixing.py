"""Weighted mixing of several training sets: which utterances of which set form an epoch, a pure function of
(seed, epoch) and the sets' sizes.

An epoch holds N = n_1 + ... + n_k utterances (all sets together, as many as concatenating them would give), of
which set i contributes round(p_i N) (largest remainders, so the counts sum to N). p_i is the set's weight over the
sum of weights, or, given no weights, proportional to (n_i / N) ** (1 / T) (XLS-R and mBART's temperature sampling;
T = 1 is concatenation). Within a set the utterances are drawn without replacement: whole shuffled passes over the
set while it owes more than its size (an up-weighted small set repeats), then a random subset. The drawn utterances
then go through the usual duration bucketing (partition.epoch_batches), so mixing changes which utterances form the
epoch, not how they are batched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Separates the mixing draw from the plan's own shuffle of the same (seed, epoch).
_MIX_STREAM = 0x4D495821  # "MIX!"


def set_probabilities(sizes: Sequence[int], weights: Sequence[float | None], temperature: float) -> np.ndarray:
    """p_i of each set: its weight's share, or (n_i / N) ** (1 / T) normalised when no set has a weight."""
    if weights and all(w is not None for w in weights):
        raw = np.asarray(weights, dtype=np.float64)
    else:
        share = np.asarray(sizes, dtype=np.float64) / max(1, sum(sizes))
        raw = share ** (1.0 / temperature)
    return raw / raw.sum()


def set_counts(sizes: Sequence[int], probabilities: np.ndarray) -> np.ndarray:
    """Utterances each set contributes to an epoch of sum(sizes): round(p_i N) by largest remainders."""
    total = int(sum(sizes))
    exact = probabilities * total
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    # Ties broken by set order, so every process agrees.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[:short]] += 1
    return counts


def epoch_draw(sizes: Sequence[int], probabilities: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """Indices into the sets' concatenation (set 0's utterances first) forming ``epoch``; set by set, each set's
    draw in random order (the plan shuffles them together afterwards)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, epoch, _MIX_STREAM])))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    parts = []
    for start, size, count in zip(starts, sizes, set_counts(sizes, probabilities)):
        passes, rest = divmod(int(count), int(size)) if size else (0, 0)
        chosen = [rng.permutation(size) for _ in range(passes)]
        chosen.append(rng.permutation(size)[:rest])
        parts.append(start + np.concatenate(chosen))
    return np.concatenate(parts).astype(np.int64)


def set_of(index: np.ndarray, sizes: Sequence[int]) -> np.ndarray:
    """Which set each concatenation index belongs to."""
    return np.searchsorted(np.cumsum(sizes), index, side="right")
