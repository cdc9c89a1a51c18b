"""The mission's core promise: the same global batches on any rank count, so runs on 1, 2 and 4 ranks take the same
optimizer steps and log the same per-step losses (fp32, no SpecAugment, within float tolerance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._dist import run_ranks
from tests._runs import metrics_by_step, tiny_flags

pytestmark = pytest.mark.slow
STEPS = 5


def _losses(tmp_path: Path, world: int) -> dict[int, float]:
    out = tmp_path / f"w{world}"
    flags = tiny_flags(
        out, f"sqlite:///{tmp_path}/mlflow.db", max_steps=STEPS, eval_steps=100, save_steps=100, report_to="none"
    )
    results = run_ranks(["-m", "xlsr_dist.train", *flags], world_size=world, timeout=900, log_dir=out / "logs")
    for r in results:
        assert r.returncode == 0, f"rank {r.rank}:\n{r.output[-3000:]}"
    return metrics_by_step(out, "loss")


def test_per_step_losses_equal_on_1_2_and_4_ranks(tmp_path: Path) -> None:
    one = _losses(tmp_path, 1)
    assert sorted(one) == list(range(1, STEPS + 1))
    for world in (2, 4):
        other = _losses(tmp_path, world)
        for step in range(1, STEPS + 1):
            assert other[step] == pytest.approx(one[step], rel=2e-4, abs=1e-5), (world, step, other[step], one[step])
