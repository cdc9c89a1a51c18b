"""Shared by the resume tests: real training runs on N ranks, an output dir and MLflow store cut back to a mid-run
checkpoint, and the check that the resumed process itself logged the later steps into the same MLflow run."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._dist import run_ranks
from tests._runs import metrics_by_step, mlflow_runs, tiny_flags

STEPS = 8
SAVE_AT = 4

# MLflow's "latest value" of each metric, as its SQL store picks it: the highest step, then timestamp, then value.
_LATEST_METRICS = """
INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid)
SELECT m.key, m.value, m.timestamp, m.step, m.is_nan, m.run_uuid FROM metrics m
WHERE NOT EXISTS (
    SELECT 1 FROM metrics n WHERE n.run_uuid = m.run_uuid AND n.key = m.key AND (
        n.step > m.step OR (n.step = m.step AND n.timestamp > m.timestamp)
        OR (n.step = m.step AND n.timestamp = m.timestamp AND n.value > m.value)))
"""


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


def assert_same_losses(losses: dict[int, float], expected: dict[int, float], steps: range, what: str) -> None:
    """Every step's loss equal to ``expected``'s (rel 1e-5); the worst difference printed."""
    worst = max(abs(losses[s] - expected[s]) / abs(expected[s]) for s in steps)
    print(f"{what}: max relative loss difference {worst:.3g}")
    for step in steps:
        assert losses[step] == pytest.approx(expected[step], rel=1e-5), (what, step)


def stopped_copy(run: Reference, dest: Path, save_at: int = SAVE_AT) -> tuple[Path, Path]:
    """An output dir and MLflow store as the run left them had it stopped right after its step-``save_at``
    checkpoint: later checkpoints, the final model and later metrics.jsonl rows removed, and the MLflow store holding
    only steps 1..save_at of the run, marked KILLED. Whatever the run holds after a resume beyond save_at, the resumed
    process sent."""
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
    cut_mlflow_store(db, save_at)
    run_id = mlflow_runs(f"sqlite:///{db}")[0].info.run_id
    assert [s for s, _ in loss_history(f"sqlite:///{db}", run_id)] == list(range(1, save_at + 1)), "the cut store"
    return out, db


def cut_mlflow_store(db: Path, last_step: int) -> None:
    """Every metric value after ``last_step`` removed from a (copied) sqlite MLflow store; its runs marked KILLED,
    as a run stopped there ends."""
    con = sqlite3.connect(db)
    try:
        with con:
            con.execute("DELETE FROM metrics WHERE step > ?", (last_step,))
            con.execute("DELETE FROM latest_metrics")
            con.execute(_LATEST_METRICS)
            con.execute("UPDATE runs SET status = 'KILLED'")
    finally:
        con.close()


def loss_history(uri: str, run_id: str, key: str = "loss") -> list[tuple[int, float]]:
    """Every value MLflow holds for ``key``, duplicates included, by step."""
    from mlflow.tracking import MlflowClient

    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def assert_mlflow_run_continued(
    uri: str, run_id: str, expected: dict[int, float], after: int = SAVE_AT, steps: int = STEPS
) -> None:
    """``run_id`` is still the only training run, finished, with one loss per step 1..steps (no gap, no duplicate),
    those after step ``after`` equal to ``expected`` (rel 1e-5)."""
    runs = mlflow_runs(uri)
    assert [r.info.run_id for r in runs] == [run_id], "the resume continues the same MLflow run"
    history = loss_history(uri, run_id)
    assert [s for s, _ in history] == list(range(1, steps + 1)), "one loss per step in MLflow: no gap, no duplicate"
    assert runs[0].info.status == "FINISHED"
    for step, value in history[after:]:
        assert value == pytest.approx(expected[step], rel=1e-5), step


def resume_and_compare(
    run: Reference, saved_on: int, world_size: int, tmp_path: Path, expected: dict[int, float]
) -> None:
    """``run`` (saved on ``saved_on`` ranks) cut back to its step-SAVE_AT checkpoint and MLflow store and resumed on
    ``world_size`` ranks logs ``expected``'s losses after it (rel 1e-5), in the same MLflow run."""
    out, db = stopped_copy(run, tmp_path)
    (run_id,) = [r.info.run_id for r in mlflow_runs(f"sqlite:///{db}")]
    output = train(out, db, world_size, tmp_path / "logs", resume_from_checkpoint="latest")
    assert f"at step {SAVE_AT}" in output
    assert f"saved on {saved_on} rank(s), continuing on {world_size} rank(s)" in output
    assert (out / "checkpoints" / f"step-{SAVE_AT:07d}" / "universal").is_dir(), "the conversion is kept"
    resumed = metrics_by_step(out, "loss")
    worst = max(abs(resumed[s] - expected[s]) / abs(expected[s]) for s in range(SAVE_AT + 1, STEPS + 1))
    print(f"{saved_on} -> {world_size}: max relative loss difference after resume {worst:.3g}")
    for step in range(SAVE_AT + 1, STEPS + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=1e-5), step
    # The store held steps 1..SAVE_AT only (stopped_copy): the later ones are the resumed process's.
    assert_mlflow_run_continued(f"sqlite:///{db}", run_id, expected)
