"""Eight ranks, the largest world size the global batch of 8 allows (1 utterance x 1 accumulation step per rank):
eight real gloo ranks (one process each, OMP_NUM_THREADS=1, on however many cores there are) log the 1-rank run's
per-step losses, and their checkpoint resumes on 2 ranks continuing the uninterrupted run.

fp32, dropout and SpecAugment off (tests/_runs.py tiny_flags): every step is a function of the global batch alone.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._resume import STEPS, Reference, resume_and_compare, train
from tests._runs import metrics_by_step

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Reference]:
    out: dict[int, Reference] = {}
    for world_size in (1, 8):
        root = tmp_path_factory.mktemp(f"ranks{world_size}")
        output = train(root / "out", root / "mlflow.db", world_size, root / "logs")
        if world_size == 8:
            assert "global batch 8 = 1 micro x 1 accumulation x 8 rank(s)" in output, output[-3000:]
            # --retain_freed_memory's default reached the training processes (tests/test_memory.py: what it does).
            assert "host memory: freed blocks kept for reuse" in output, output[-3000:]
        out[world_size] = Reference(root / "out", root / "mlflow.db", metrics_by_step(root / "out", "loss"))
    return out


def test_eight_ranks_log_the_one_rank_runs_losses(runs: dict[int, Reference]) -> None:
    one, eight = runs[1].losses, runs[8].losses
    assert sorted(one) == sorted(eight) == list(range(1, STEPS + 1))
    worst = max(abs(eight[s] - one[s]) / abs(one[s]) for s in one)
    print(f"1 vs 8 ranks: max relative loss difference {worst:.3g}")
    for step in one:
        assert eight[step] == pytest.approx(one[step], rel=1e-5), step
    # Training moved the weights: equal losses are not the same first step repeated.
    assert len({round(v, 6) for v in one.values()}) == STEPS


def test_eight_rank_checkpoint_resumes_on_two_ranks_with_the_uninterrupted_losses(
    runs: dict[int, Reference], tmp_path: Path
) -> None:
    resume_and_compare(runs[8], 8, 2, tmp_path, runs[8].losses)
