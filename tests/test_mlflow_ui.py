"""What a user sees in the MLflow UI: the reference run and a training run side by side with their metrics,
rendered by headless Chromium from a real server. Screenshots are kept under test-artifacts/ for a human look."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from tests._system import cannot_run
from xlsr_dist.reference import RUN_NAME, ensure_reference_run
from xlsr_dist.tracking import MlflowTracker, open_client

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
TRAIN_RUN = "ui-training-run"
BUDGETS_MS = (15000, 30000, 60000, 120000)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session", autouse=True)
def chromium_installed() -> None:
    """Session-scoped so it is decided before the MLflow server (a session fixture) starts for nothing."""
    if not CHROMIUM.exists():
        cannot_run(
            "the MLflow UI charts and compares the reference run and a training run",
            "needs Debian's chromium at /usr/bin/chromium; `make system-deps` as root installs it",
        )


def _chromium(url: str, profile: Path, *mode: str, budget_ms: int = 15000, size: str = "1600,1000") -> str:
    shutil.rmtree(profile, ignore_errors=True)
    # The UI is a React app: --virtual-time-budget lets its fetches and renders finish before the dump/screenshot.
    cmd = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--virtual-time-budget={budget_ms}",
        f"--window-size={size}",
        *mode,
        url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _drawn_fraction(png: Path, box: tuple[int, int, int, int]) -> float:
    """Share of non-white pixels in ``box``: a chart with lines and points vs an empty panel with a spinner."""
    from PIL import Image

    with Image.open(png) as im:
        crop = im.convert("L").crop(box)
        hist = crop.histogram()
    return 1.0 - sum(hist[200:]) / max(1, sum(hist))


def ui_number(value: float) -> str:
    """A metric value as MLflow's UI writes it (Utils.formatMetric in its JS bundle): rounded to 3 decimals below 10,
    2 below 100, 1 above, in exponent notation below 1e-3; JavaScript's Math.round and number printing."""
    if math.isnan(value):
        return "NaN"
    if value == 0:
        return "0"
    if abs(value) < 1e-3:
        mantissa, exponent = f"{value:.3e}".split("e")
        return f"{mantissa}e{int(exponent)}"
    scale = 1000 if abs(value) < 10 else 100 if abs(value) < 100 else 10
    rounded = math.floor(value * scale + 0.5) / scale
    return str(int(rounded)) if rounded.is_integer() else repr(rounded)


def test_ui_number_writes_what_the_ui_showed() -> None:
    # Values read off the compare page of this file's runs.
    assert [ui_number(v) for v in (1000 / 300, 29.7, 0.3033, 1e-4, 0.2, 6.0 / 1000**0.4)] == [
        "3.333",
        "29.7",
        "0.303",
        "1.000e-4",
        "0.2",
        "0.379",
    ]


def _visible_text(dom: str) -> str:
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", dom, flags=re.S)
    return " ".join(re.sub(r"<[^>]+>", " ", text).split())


@pytest.fixture(scope="module")
def runs(mlflow_server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:  # noqa: F811
    client = open_client(mlflow_server.uri)
    reference_id, _ = ensure_reference_run(client, "ui", mlflow_server.uri)
    tracker = MlflowTracker(mlflow_server.uri, "ui", tmp_path_factory.mktemp("out"), run_name=TRAIN_RUN)
    train_id = tracker.start({"learning_rate": 1e-4, "global_batch_size": 8}, {"xlsr_dist.kind": "training"})
    for step in range(25, 1001, 25):
        tracker.log_metrics({"loss": 6.0 / step**0.4, "learning_rate": 1e-4, "epoch": step / 300}, step)
        if step % 250 == 0:
            tracker.log_metrics({"eval_loss": 4.0 / step**0.3, "eval_wer": 1.2 - step / 1000, "eval_cer": 0.3}, step)
    tracker.close()
    experiment_id = client.get_experiment_by_name("ui").experiment_id
    return {"experiment": experiment_id, "reference": reference_id, "train": str(train_id)}


def test_runs_page_charts_both_runs_metrics(mlflow_server, runs: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    url = f"{mlflow_server.uri}/#/experiments/{runs['experiment']}/runs?compareRunsMode=CHART"
    # Each chart's legend names both runs with the metric.
    legends = [f"{run} ({metric})" for run in (TRAIN_RUN, RUN_NAME) for metric in ("loss", "eval_loss", "eval_wer")]
    # The charts' code is a large lazily loaded chunk: on a busy machine the first budget can run out while the
    # panels still show spinners, so give it longer before calling the page broken.
    for budget_ms in BUDGETS_MS:
        text = _visible_text(_chromium(url, tmp_path / "profile", "--dump-dom", budget_ms=budget_ms))
        if all(legend in text for legend in legends):
            break
    assert TRAIN_RUN in text and RUN_NAME in text
    assert [legend for legend in legends if legend not in text] == []
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow_ui_runs_charts.png"
    for budget_ms in BUDGETS_MS:
        shot.unlink(missing_ok=True)
        _chromium(url, tmp_path / "profile", f"--screenshot={shot}", budget_ms=budget_ms)
        drawn = _drawn_fraction(shot, (530, 290, 1130, 640))  # the first row of metric charts
        if drawn > 0.02:
            break
    assert drawn > 0.02, f"metric charts not drawn in {shot}"


def test_compare_page_lists_both_runs_with_metric_values(
    mlflow_server,
    runs: dict[str, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    ids = urllib.parse.quote(json.dumps([runs["train"], runs["reference"]]))
    url = (
        f"{mlflow_server.uri}/#/compare-runs?runs={ids}"
        f"&experiments={urllib.parse.quote(json.dumps([runs['experiment']]))}"
    )
    for budget_ms in BUDGETS_MS:
        text = _visible_text(_chromium(url, tmp_path / "profile", "--dump-dom", budget_ms=budget_ms))
        if "Metrics Show diff only" in text and TRAIN_RUN in text:
            break
    assert "Comparing 2 Runs" in text
    assert TRAIN_RUN in text and RUN_NAME in text and "Metrics Show diff only" in text
    # The metrics table: its row names, then row by row each run's latest value (training run first, as in the
    # URL), as the UI writes them; NaN where a run has no such metric.
    client = open_client(mlflow_server.uri)
    latest = [client.get_run(runs[run]).data.metrics for run in ("train", "reference")]
    names = sorted(set(latest[0]) | set(latest[1]))
    assert {"loss", "eval_loss", "eval_wer"} <= set(latest[0]) & set(latest[1])
    values = [ui_number(values_of_run.get(name, math.nan)) for name in names for values_of_run in latest]
    table = " ".join(["Metrics Show diff only", *names, *values, "Artifacts"])
    assert table in text, text[text.index("Metrics Show diff only") :][:1000]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "mlflow_ui_compare_runs.png"
    shot.unlink(missing_ok=True)
    _chromium(url, tmp_path / "profile", f"--screenshot={shot}", size="1600,2600")  # down to the metrics table
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
