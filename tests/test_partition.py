"""The global batch plan: same utterances per step for any world size, each once per epoch, little padding."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from xlsr_dist.config import plan_batches
from xlsr_dist.data.partition import (
    PADDING_SLOT,
    common_voice_like_durations,
    epoch_batches,
    eval_rank_batches,
    padding_fraction,
    rank_micro_batches,
)

WORLDS = (1, 2, 4, 8)


@pytest.mark.parametrize("n", [8, 203, 1000])
def test_every_world_size_gives_step_k_the_same_utterances(n: int) -> None:
    d = common_voice_like_durations(n, seed=3)
    rows = epoch_batches(d, seed=7, epoch=2, global_batch=8, bucket_size_multiplier=4)
    assert rows.shape == (n // 8, 8)
    for world in WORLDS:
        plan = plan_batches(8, world)
        for k, row in enumerate(rows):
            union: Counter[int] = Counter()
            for rank in range(world):
                micro = rank_micro_batches(row, rank, plan)
                assert len(micro) == plan.grad_accum
                assert all(m.shape == (plan.micro_batch,) for m in micro)
                for m in micro:
                    union.update(m.tolist())
            assert union == Counter(row.tolist()), f"world {world} step {k}"


def test_rank_slices_are_contiguous_positions_of_the_global_batch() -> None:
    row = np.arange(100, 108)
    plan = plan_batches(8, 2)  # 4 x 1
    assert [m.tolist() for m in rank_micro_batches(row, 1, plan)] == [[104, 105, 106, 107]]
    plan1 = plan_batches(8, 1)  # 4 x 2
    assert [m.tolist() for m in rank_micro_batches(row, 0, plan1)] == [[100, 101, 102, 103], [104, 105, 106, 107]]
    with pytest.raises(ValueError, match="rank 2"):
        rank_micro_batches(row, 2, plan)


def test_an_epoch_uses_each_utterance_once_and_drops_a_changing_remainder() -> None:
    n = 203  # remainder 3
    d = common_voice_like_durations(n, seed=1)
    left_out = []
    for epoch in range(3):
        flat = epoch_batches(d, 0, epoch, 8, 4).ravel()
        assert len(set(flat.tolist())) == flat.size == n - n % 8
        left_out.append(set(range(n)) - set(flat.tolist()))
        assert len(left_out[-1]) == 3
    assert left_out[0] != left_out[1] != left_out[2]


def test_plan_is_a_pure_function_of_seed_and_epoch() -> None:
    d = common_voice_like_durations(500, seed=2)
    a = epoch_batches(d, 42, 0, 8, 10)
    np.testing.assert_array_equal(a, epoch_batches(d.copy(), 42, 0, 8, 10))
    assert not np.array_equal(a, epoch_batches(d, 42, 1, 8, 10))
    assert not np.array_equal(a, epoch_batches(d, 43, 0, 8, 10))


def test_fewer_utterances_than_a_global_batch_give_no_step() -> None:
    assert epoch_batches([1.0] * 7, 0, 0, 8, 100).shape == (0, 8)


def test_bucketing_keeps_padding_under_1_5_percent_while_random_batching_pads_a_lot() -> None:
    # Common-Voice-like: lognormal, median 4.8 s, sigma 0.35, clipped to [1, 15] s.
    d = common_voice_like_durations(20000, seed=0)
    one_rank = plan_batches(8, 1)  # micro-batches of 4: where padding happens
    bucketed = padding_fraction(d, epoch_batches(d, 0, 0, 8, 100), one_rank)
    random = padding_fraction(d, epoch_batches(d, 0, 0, 8, 1), one_rank)
    assert bucketed <= 0.015, bucketed
    assert random > 0.15, random  # ~19 % on this distribution
    assert padding_fraction(d, epoch_batches(d, 0, 0, 8, 100), plan_batches(8, 8)) == 0.0


def test_bucketed_batches_come_in_random_length_order() -> None:
    d = common_voice_like_durations(20000, seed=0)
    rows = epoch_batches(d, 5, 0, 8, 100)
    means = d[rows].mean(axis=1)
    ranks = np.argsort(np.argsort(means))
    rho = np.corrcoef(ranks, np.arange(len(means)))[0, 1]  # Spearman: ranks vs step order
    assert abs(rho) < 0.05, rho
    ups = np.diff(means) > 0
    assert 0.4 < ups.mean() < 0.6  # neither sorted nor sawtooth within windows


def test_a_sortagrad_epoch_runs_shortest_first_over_the_same_utterances_and_resumes_exactly() -> None:
    d = common_voice_like_durations(203, seed=4)
    plain = epoch_batches(d, 9, 0, 8, 4)
    sorted_epoch = epoch_batches(d, 9, 0, 8, 4, shortest_first=True)
    # Same utterances left out as without SortaGrad; only the order changes.
    assert sorted(sorted_epoch.ravel().tolist()) == sorted(plain.ravel().tolist())
    flat = d[sorted_epoch.ravel()]
    assert (np.diff(flat) >= 0).all()  # non-decreasing durations, across and within batches
    # A resumed run recomputes the epoch from (seed, epoch) alone.
    np.testing.assert_array_equal(sorted_epoch, epoch_batches(d.copy(), 9, 0, 8, 4, shortest_first=True))
    # Off (the default), plans are those of the code before SortaGrad existed (checkpoints resume onto them).
    assert plain[:2].tolist() == [[184, 119, 89, 91, 135, 37, 52, 194], [16, 69, 200, 171, 44, 21, 20, 45]]


@pytest.mark.parametrize("n", [0, 1, 5, 17, 64, 100])
@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_eval_split_covers_each_utterance_once_with_equal_batch_counts(n: int, world: int, batch_size: int) -> None:
    d = common_voice_like_durations(n, seed=n)
    per_rank = [eval_rank_batches(d, world, r, batch_size) for r in range(world)]
    assert len({len(b) for b in per_rank}) == 1
    seen = [i for batches in per_rank for b in batches for i in b.tolist() if i != PADDING_SLOT]
    assert sorted(seen) == list(range(n))
    for batches in per_rank:
        for b in batches:
            assert 1 <= b.size <= batch_size
            # Padding appears only as the single item of a rank that has nothing left.
            assert PADDING_SLOT not in b.tolist() or b.tolist() == [PADDING_SLOT]
