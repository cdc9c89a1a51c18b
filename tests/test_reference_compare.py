"""The reference model card as an MLflow run (imported once, completed when partial) and the run-vs-reference
comparison a user prints and plots during or after training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xlsr_dist.compare import Cell, compare_rows, format_table, interpolate, value_at
from xlsr_dist.reference import COLUMNS, RUN_NAME, ensure_reference_run, load_reference, reference_series
from xlsr_dist.tracking import REFERENCE_TAG, MlflowTracker, open_client

REPO = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], capture_output=True, text=True, env=ENV, timeout=300, cwd=cwd
    )
    assert done.returncode == 0, done.stderr
    return done


# ---- pure -----------------------------------------------------------------------------------------------------


def test_reference_table_is_the_model_card() -> None:
    rows = load_reference()
    assert [r.step for r in rows] == list(range(500, 9001, 500))
    assert (rows[0].training_loss, rows[0].validation_loss, rows[0].wer, rows[0].epoch) == (4.6589, 3.1548, 1.0, 1.65)
    assert (rows[-1].validation_loss, rows[-1].wer) == (0.3430, 0.3033)
    assert set(reference_series()) == set(COLUMNS) == {"loss", "eval_loss", "eval_wer", "epoch"}


def test_run_value_is_exact_or_nearest_earlier_within_interval() -> None:
    series = {25: 3.0, 50: 2.0, 75: 1.5}
    assert value_at(series, 50, 25) == 2.0
    assert value_at(series, 60, 25) == 2.0
    assert value_at(series, 100, 25) is None  # 75 is a whole interval before: not this step's value
    assert value_at(series, 10, 25) is None


def test_reference_interpolates_between_card_steps_only() -> None:
    ref = {500: 3.0, 1000: 1.0}
    assert interpolate(ref, 500) == (3.0, False)
    assert interpolate(ref, 750) == (2.0, True)
    assert interpolate(ref, 300) == (None, False)
    assert interpolate(ref, 1200) == (None, False)


def test_rows_are_reached_reference_steps_plus_run_eval_steps() -> None:
    run = {
        "loss": {s: 1.0 for s in range(25, 1101, 25)},
        "eval_loss": {s: 0.5 for s in range(300, 1101, 300)},
        "eval_wer": {s: 0.4 for s in range(300, 1101, 300)},
    }
    rows = compare_rows(run, reference_series(), {"logging_steps": "25", "eval_steps": "300"})
    assert [r.step for r in rows] == [300, 500, 600, 900, 1000]
    by_step = {r.step: r.cells for r in rows}
    # No eval at 500: the run's latest evaluation (300, less than one eval interval before) stands for it.
    assert by_step[500]["eval_wer"] == Cell(0.4, 1.0, False)
    assert by_step[500]["eval_wer"].difference == pytest.approx(-0.6)
    assert by_step[500]["loss"] == Cell(1.0, 4.6589, False)
    assert by_step[300]["eval_loss"].reference is None  # before the card's first step
    assert by_step[600]["eval_wer"].interpolated
    table = format_table(rows)
    assert "~" in table.splitlines()[4] and table.splitlines()[0].split()[0] == "step"


# ---- against a real server ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_reference_import_is_idempotent(mlflow_server) -> None:  # noqa: F811
    args = ("--tracking_uri", mlflow_server.uri, "--experiment_name", "ref-idem")
    first = _cli("xlsr_dist.reference", *args)
    second = _cli("xlsr_dist.reference", *args)
    assert "imported" in first.stdout and "already imported and complete" in second.stdout

    client = open_client(mlflow_server.uri)
    exp = client.get_experiment_by_name("ref-idem")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.run_name == RUN_NAME and run.data.tags[REFERENCE_TAG] == "true"
    assert run.info.status == "FINISHED"
    assert run.data.params["learning_rate"] == "0.0001" and run.data.params["lr_scheduler_warmup_steps"] == "1000"
    for metric, by_step in reference_series().items():
        history = client.get_metric_history(run.info.run_id, metric)
        assert {m.step: m.value for m in history} == by_step and len(history) == 18, metric


@pytest.mark.slow
def test_partial_reference_run_is_completed_not_duplicated(mlflow_server) -> None:  # noqa: F811
    from mlflow.entities import Metric

    client = open_client(mlflow_server.uri)
    exp_id = client.create_experiment("ref-partial")
    partial = client.create_run(exp_id, tags={REFERENCE_TAG: "true"}, run_name=RUN_NAME)
    client.log_batch(partial.info.run_id, metrics=[Metric("eval_wer", 1.0, 1, 500), Metric("loss", 4.6589, 1, 500)])
    run_id, outcome = ensure_reference_run(client, "ref-partial", mlflow_server.uri)
    assert run_id == partial.info.run_id and outcome == f"filled {4 * 18 - 2}"
    assert len(client.search_runs([exp_id])) == 1
    for metric, by_step in reference_series().items():
        assert sorted(m.step for m in client.get_metric_history(run_id, metric)) == sorted(by_step), metric
    assert ensure_reference_run(client, "ref-partial", mlflow_server.uri) == (run_id, "complete")


@pytest.mark.slow
def test_compare_prints_table_writes_plot_and_logs_it(mlflow_server, tmp_path: Path) -> None:  # noqa: F811
    experiment = "compare"
    _cli("xlsr_dist.reference", "--tracking_uri", mlflow_server.uri, "--experiment_name", experiment)
    tracker = MlflowTracker(mlflow_server.uri, experiment, tmp_path / "out", run_name="short-demo")
    run_id = tracker.start(
        {
            "logging_steps": 25,
            "eval_steps": 250,
            "global_batch_size": 8,
            "world_size": 2,
            "micro_batch": 4,
            "grad_accum": 1,
        },
        {"xlsr_dist.kind": "training"},
    )
    for step in range(25, 1051, 25):
        tracker.log_metrics({"loss": 5.0 / step**0.5, "learning_rate": 1e-4}, step)
        if step % 250 == 0:
            tracker.log_metrics({"eval_loss": 2.0, "eval_wer": 0.9}, step)
    # Compared while the run is still RUNNING, as during training.
    assert tracker.flush(60)
    png = tmp_path / "cmp.png"
    # 'latest' must pick the training run, not the reference imported into the same experiment.
    done = _cli(
        "xlsr_dist.compare",
        "latest",
        "--tracking_uri",
        mlflow_server.uri,
        "--experiment_name",
        experiment,
        "--out",
        str(png),
    )
    tracker.close()
    lines = done.stdout.splitlines()
    assert f"run short-demo ({run_id}" in lines[0]
    row = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0].isdigit()}
    assert sorted(int(s) for s in row) == [250, 500, 750, 1000]
    # step 500: run loss logged there, the card's 4.6589, difference; eval 2.0 vs 3.1548; WER 0.9 vs 1.0
    assert row["500"][1:] == [
        "0.2236",
        "4.6589",
        "-4.4353",
        "2.0000",
        "3.1548",
        "-1.1548",
        "0.9000",
        "1.0000",
        "-0.1000",
    ]
    assert row["750"][2].startswith("~") and row["250"][2] == "-"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000
    logged = [f.path for f in open_client(mlflow_server.uri).list_artifacts(run_id, "compare")]
    assert logged == ["compare/cmp.png"]
