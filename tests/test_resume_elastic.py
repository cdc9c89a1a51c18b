"""Elastic resume through the real trainer: a run checkpointed on N ranks continues on M ranks with the losses of the
run that never stopped, in the same MLflow run.

fp32, dropout off and no SpecAugment (tests/_runs.py tiny_flags), so every step is a function of the global batch
alone, which is the same on every world size. One uninterrupted 2-rank run per module is the reference.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest

from tests._dist import base_env, run_ranks
from tests._resume import (
    SAVE_AT,
    STEPS,
    Reference,
    resume_and_compare,
    stopped_copy,
    train,
)
from tests._runs import metrics_by_step, mlflow_history, mlflow_runs, tiny_flags

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference_2_ranks(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    out, db = root / "out", root / "mlflow.db"
    train(out, db, 2, root / "logs")
    return Reference(out, db, metrics_by_step(out, "loss"))


@pytest.mark.parametrize("world_size", [1, 4])
def test_two_rank_checkpoint_resumes_on_other_world_size_with_same_losses(
    reference_2_ranks: Reference, world_size: int, tmp_path: Path
) -> None:
    resume_and_compare(reference_2_ranks, 2, world_size, tmp_path, reference_2_ranks.losses)


def test_four_rank_checkpoint_resumes_on_two_ranks_with_same_losses(
    reference_2_ranks: Reference, tmp_path: Path
) -> None:
    four = tmp_path / "four"
    train(four / "out", four / "mlflow.db", 4, four / "logs", max_steps=str(STEPS))
    run = Reference(four / "out", four / "mlflow.db", metrics_by_step(four / "out", "loss"))
    resume_and_compare(run, 4, 2, tmp_path / "resumed", reference_2_ranks.losses)


def test_setting_that_cannot_carry_over_stops_at_start_up_with_status_2(
    reference_2_ranks: Reference, tmp_path: Path
) -> None:
    out, db = stopped_copy(reference_2_ranks, tmp_path)
    flags = tiny_flags(out, f"sqlite:///{db}", resume_from_checkpoint="latest", learning_rate=1e-3)
    results = run_ranks(["-m", "xlsr_dist.train", *flags], world_size=1, timeout=300, log_dir=tmp_path / "logs")
    assert results[0].returncode == 2, results[0].output[-3000:]
    assert "optimizer.params.lr was 0.002 and is now 0.001 (--learning_rate)" in results[0].output
    assert "Traceback" not in results[0].output
    assert not (out / "checkpoints" / f"step-{SAVE_AT:07d}" / "universal").exists(), "nothing converted"


def test_another_runs_checkpoint_resumes_into_a_new_output_dir_that_exports_and_transcribes(
    reference_2_ranks: Reference, tmp_path: Path
) -> None:
    db = tmp_path / "mlflow.db"
    shutil.copy(reference_2_ranks.db, db)
    ckpt = reference_2_ranks.out / "checkpoints" / f"step-{SAVE_AT:07d}"
    out = tmp_path / "new_run"
    train(out, db, 2, tmp_path / "logs", resume_from_checkpoint=str(ckpt))
    assert (out / "model_config" / "vocab.json").read_text() == (
        reference_2_ranks.out / "model_config" / "vocab.json"
    ).read_text()
    assert (out / "final" / "config.json").is_file()
    runs = mlflow_runs(f"sqlite:///{db}")
    assert len(runs) == 2, "a new output dir is a new MLflow run"
    new = next(r for r in runs if r.info.run_id != mlflow_runs(f"sqlite:///{reference_2_ranks.db}")[0].info.run_id)
    assert sorted(mlflow_history(f"sqlite:///{db}", new.info.run_id, "loss")) == list(range(SAVE_AT + 1, STEPS + 1))
    export_dir = tmp_path / "exported"
    env = base_env()
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.export", "--output_dir", str(out), "--export_dir", str(export_dir)]
        + ["--no_mlflow"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    audio = tmp_path / "a.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(bytes(2 * 16000))
    done = subprocess.run(
        [sys.executable, "-m", "xlsr_dist.transcribe", "--model", str(export_dir), str(audio)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 1 and done.stdout.startswith(f"{audio}\t")
