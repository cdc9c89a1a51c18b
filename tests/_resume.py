"""Shared by the resume tests: real training runs on N ranks and an output dir cut back to a mid-run checkpoint."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._dist import run_ranks
from tests._runs import metrics_by_step, mlflow_history, mlflow_runs, tiny_flags

STEPS = 8
SAVE_AT = 4


@dataclass(frozen=True)
class Reference:
    out: Path
    db: Path
    losses: dict[int, float]


def train(out: Path, db: Path, world_size: int, logs: Path, **flags: str) -> str:
    results = run_ranks(
        ["-m", "xlsr_dist.train", *tiny_flags(out, f"sqlite:///{db}", **flags)],
        world_size=world_size,
        timeout=600,
        log_dir=logs,
    )
    for r in results:
        assert r.returncode == 0, f"rank {r.rank} failed:\n" + "\n".join(r.output.splitlines()[-40:])
    return results[0].output


def stopped_copy(run: Reference, dest: Path, save_at: int = SAVE_AT) -> tuple[Path, Path]:
    """An output dir (and its MLflow store) as if the run had stopped right after the step-``save_at`` checkpoint."""
    out, db = dest / "out", dest / "mlflow.db"
    shutil.copytree(run.out, out)
    shutil.copy(run.db, db)
    for later in (out / "checkpoints").glob("step-*"):
        if int(later.name.split("-")[1]) > save_at:
            shutil.rmtree(later)
    shutil.rmtree(out / "final")
    rows = (out / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in rows if json.loads(line).get("step", 0) <= save_at]  # marker rows have no step
    (out / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    return out, db


def resume_and_compare(
    run: Reference, saved_on: int, world_size: int, tmp_path: Path, expected: dict[int, float]
) -> None:
    """``run`` (saved on ``saved_on`` ranks) cut back to its step-SAVE_AT checkpoint and resumed on ``world_size``
    ranks logs ``expected``'s losses after it (rel 1e-5), in the same MLflow run."""
    out, db = stopped_copy(run, tmp_path)
    run_ids = [r.info.run_id for r in mlflow_runs(f"sqlite:///{db}")]
    output = train(out, db, world_size, tmp_path / "logs", resume_from_checkpoint="latest")
    assert f"at step {SAVE_AT}" in output
    assert f"saved on {saved_on} rank(s), continuing on {world_size} rank(s)" in output
    assert (out / "checkpoints" / f"step-{SAVE_AT:07d}" / "universal").is_dir(), "the conversion is kept"
    resumed = metrics_by_step(out, "loss")
    worst = max(abs(resumed[s] - expected[s]) / abs(expected[s]) for s in range(SAVE_AT + 1, STEPS + 1))
    print(f"{saved_on} -> {world_size}: max relative loss difference after resume {worst:.3g}")
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
    runs = mlflow_runs(f"sqlite:///{db}")
    assert [r.info.run_id for r in runs] == run_ids, "the resume continues the same MLflow run"
    history = mlflow_history(f"sqlite:///{db}", runs[0].info.run_id, "loss")
    assert sorted(history) == list(range(1, STEPS + 1))
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert history[step] == pytest.approx(expected[step], rel=1e-5), step
