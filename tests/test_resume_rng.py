"""Same-world-size resume with randomness on: each rank's random streams are saved with the checkpoint and restored,
so dropout continues as in the run that never stopped (SpecAugment masks come from the data, see
tests/test_shared_randomness.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests._resume import SAVE_AT, STEPS, Reference, assert_mlflow_run_continued, stopped_copy, train
from tests._runs import metrics_by_step, mlflow_runs

pytestmark = pytest.mark.slow

RANDOM = {"mask_time_prob": "0.05", "hidden_dropout": "0.1", "attention_dropout": "0.1"}


def test_same_world_size_resume_with_specaugment_and_dropout_has_the_same_losses(tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(full / "out", full / "mlflow.db", 2, full / "logs", **RANDOM)
    run = Reference(full / "out", full / "mlflow.db", metrics_by_step(full / "out", "loss"))
    assert (full / "out" / "checkpoints" / f"step-{SAVE_AT:07d}" / "rng_state" / "rank_00001.pt").is_file()

    out, db = stopped_copy(run, tmp_path / "resumed")
    (run_id,) = [r.info.run_id for r in mlflow_runs(f"sqlite:///{db}")]
    output = train(out, db, 2, tmp_path / "resumed" / "logs", resume_from_checkpoint="latest", **RANDOM)
    assert "random streams restored" in output
    resumed = metrics_by_step(out, "loss")
    worst = max(abs(resumed[s] - run.losses[s]) / abs(run.losses[s]) for s in range(SAVE_AT + 1, STEPS + 1))
    print(f"2 -> 2 with SpecAugment and dropout: max relative loss difference after resume {worst:.3g}")
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(run.losses[step], rel=1e-5), step
    assert_mlflow_run_continued(f"sqlite:///{db}", run_id, run.losses)
