"""End to end on this CPU with real ranks: launchers, evaluation, checkpoints, one MLflow run, resume."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._dist import base_env, run_launcher, run_ranks, venv_bin
from tests._resume import SAVE_AT, STEPS, Reference, assert_mlflow_run_continued, stopped_copy, train
from tests._runs import metrics_by_step, mlflow_history, mlflow_runs, tiny_flags

pytestmark = pytest.mark.slow


# The global batch of 8 on 1 rank: 4 utterances x 2 accumulation steps; on 2 ranks: 4 x 1 each.
EXPECTED_SPLIT = {1: ("4", "2"), 2: ("4", "1")}


def _check_complete_run(out: Path, uri: str, steps: int, world_size: int) -> str:
    """One MLflow run with every step's metrics, eval and a checkpoint every 4 steps (tiny_flags), its world's batch
    split as params, and the final model."""
    runs = mlflow_runs(uri)
    assert len(runs) == 1, f"expected exactly one MLflow run, found {len(runs)}"
    run_id = runs[0].info.run_id
    losses = mlflow_history(uri, run_id, "loss")
    assert sorted(losses) == list(range(1, steps + 1))
    every_4 = set(range(4, steps + 1, 4))
    for key in ("eval_loss", "eval_wer", "eval_cer"):
        assert set(mlflow_history(uri, run_id, key)) == every_4, key
    for key in ("learning_rate", "grad_norm", "loss_scale", "epoch", "throughput"):
        assert sorted(mlflow_history(uri, run_id, key)) == list(range(1, steps + 1)), key
    params = runs[0].data.params
    assert (params["world_size"], params["micro_batch"], params["grad_accum"]) == (
        str(world_size),
        *EXPECTED_SPLIT[world_size],
    )
    assert (out / "final" / "config.json").is_file()
    done = sorted(p.name for p in (out / "checkpoints").iterdir() if (p / "COMPLETE.json").is_file())
    assert done == [f"step-{step:07d}" for step in sorted(every_4)]
    return run_id


def test_deepspeed_launcher_two_ranks(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_launcher(
        [
            venv_bin("deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            "29611",
            "--module",
            "xlsr_dist.train",
            *tiny_flags(out, uri),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _check_complete_run(out, uri, 8, world_size=2)
    assert "eval step 8: loss" in proc.stderr + proc.stdout


def test_torchrun_two_ranks(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    proc = run_launcher(
        [
            venv_bin("torchrun"),
            "--nproc_per_node",
            "2",
            "--master_port",
            "29612",
            "-m",
            "xlsr_dist.train",
            *tiny_flags(out, uri, max_steps=4, eval_steps=4, save_steps=4),
        ],
        timeout=600,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    _check_complete_run(out, uri, 4, world_size=2)


def test_plain_python_one_rank(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    proc = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.train", *tiny_flags(out, uri, max_steps=4, eval_steps=4, save_steps=4)],
        cwd=Path(__file__).resolve().parent.parent,
        env=base_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_complete_run(out, uri, 4, world_size=1)


def test_world_size_3_stops_before_any_work_naming_what_works(tmp_path: Path) -> None:
    out, uri = tmp_path / "out", f"sqlite:///{tmp_path}/mlflow.db"
    results = run_ranks(
        ["-m", "xlsr_dist.train", *tiny_flags(out, uri)], world_size=3, timeout=120, log_dir=tmp_path / "logs"
    )
    assert [r.returncode for r in results] == [2, 2, 2]
    assert "world size 3 cannot keep --global_batch_size 8" in results[0].output
    assert "1, 2, 4, 8" in results[0].output
    assert not out.exists(), "nothing may start before the batch arithmetic is checked"


def test_resume_continues_at_next_step_with_same_run_and_same_losses(tmp_path: Path) -> None:
    full = tmp_path / "full"
    train(full / "out", full / "mlflow.db", 2, full / "logs")
    run = Reference(full / "out", full / "mlflow.db", metrics_by_step(full / "out", "loss"))

    # The output dir and MLflow store as a run stopped after the step-4 checkpoint left them (steps 1-4 only).
    out, db = stopped_copy(run, tmp_path / "resumed")
    (run_id,) = [r.info.run_id for r in mlflow_runs(f"sqlite:///{db}")]
    output = train(out, db, 2, tmp_path / "resumed" / "logs", resume_from_checkpoint="latest")
    assert "resumed from" in output and f"at step {SAVE_AT}" in output
    resumed_losses = metrics_by_step(out, "loss")
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert resumed_losses[step] == pytest.approx(run.losses[step], rel=1e-5, abs=1e-6), step
    assert_mlflow_run_continued(f"sqlite:///{db}", run_id, run.losses)
