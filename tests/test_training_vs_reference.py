"""A real short CPU training run and the imported reference share one experiment on a real MLflow server, with the
same metric names and step meaning, so MLflow's compare views overlay them; compare prints and plots both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests._dist import ROOT, base_env
from tests._runs import tiny_flags
from xlsr_dist.reference import RUN_NAME
from xlsr_dist.tracking import open_client

pytestmark = pytest.mark.slow


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def test_training_run_and_reference_overlay_in_one_experiment(mlflow_server, tmp_path: Path) -> None:  # noqa: F811
    uri, experiment = mlflow_server.uri, "e2e"  # tiny_flags logs to the experiment "e2e"
    _run("xlsr_dist.reference", "--tracking_uri", uri, "--experiment_name", experiment)
    out = tmp_path / "out"
    _run("xlsr_dist.train", *tiny_flags(out, uri, max_steps=4, eval_steps=2, save_steps=4, run_name="cpu-short"))

    client = open_client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {RUN_NAME, "cpu-short"}
    reference_keys = set(runs[RUN_NAME].data.metrics)
    assert reference_keys == {"loss", "eval_loss", "eval_wer", "epoch"}
    assert reference_keys <= set(runs["cpu-short"].data.metrics), "training must log the reference's metric names"
    train_id = runs["cpu-short"].info.run_id
    assert [m.step for m in client.get_metric_history(train_id, "eval_wer")] == [2, 4]  # optimizer steps

    png = tmp_path / "compare.png"
    done = _run(
        "xlsr_dist.compare", "latest", "--tracking_uri", uri, "--experiment_name", experiment, "--out", str(png)
    )
    assert "cpu-short" in done.stdout.splitlines()[0]
    steps = [line.split()[0] for line in done.stdout.splitlines() if line.split() and line.split()[0].isdigit()]
    assert steps == ["2", "4"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [f.path for f in client.list_artifacts(train_id, "compare")] == ["compare/compare.png"]
