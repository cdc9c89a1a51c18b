"""The local records of a training run's tracking, in its --output_dir: readers and writers.

- ``metrics.jsonl``: every metric row rank 0 logged, one JSON line per call, flushed (a crash keeps every row logged
  before it). Only appended to; each tracker start writes a marker row, and readers take the rows after the last
  marker of a fresh (not resumed) start, so a new run in an old --output_dir does not mix with the old one.
- ``run_info.json``: the MLflow run id, tracking URI (password redacted) and experiment, once the run exists.
- ``train_config.json``: the run's settings as logged to MLflow, with their types: secret-named ones left out and
  credentials in values redacted, as in the params.

The names of run_info.json and train_config.json are in run_dir.py, with the rest of --output_dir's layout.
- ``mlflow_unsent.jsonl``: what a tracker could not send before it closed (a ``run`` header row, then ``start``,
  ``metric``, ``artifact`` and ``end`` rows), for ``python -m xlsr_dist.tracking replay``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from xlsr_dist import atomic
from xlsr_dist.run_dir import RUN_INFO, TRAIN_CONFIG
from xlsr_dist.tracking.redact import redact_values

METRICS_FILE = "metrics.jsonl"
UNSENT_FILE = "mlflow_unsent.jsonl"


def write_run_info(output_dir: str | Path, run_id: str, tracking_uri: str, experiment: str) -> None:
    atomic.write_json(
        Path(output_dir) / RUN_INFO,
        redact_values({"run_id": run_id, "tracking_uri": tracking_uri, "experiment": experiment}),
    )


def write_train_config(output_dir: str | Path, params: Mapping[str, Any]) -> None:
    # Through JSON first: values json cannot hold (paths, dtypes) become their text, which is then redacted too.
    plain = json.loads(json.dumps(dict(params), default=str))
    atomic.write_text(Path(output_dir) / TRAIN_CONFIG, json.dumps(redact_values(plain), indent=1))


def read_run_info(output_dir: str | Path) -> dict[str, Any] | None:
    path = Path(output_dir) / RUN_INFO
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def open_record(output_dir: Path, resume: bool) -> IO[str]:
    """metrics.jsonl opened for appending, after a marker saying whether this run continues the rows before it.

    Nothing is truncated: a resumed run whose MLflow run id was never known still keeps its earlier rows on disk."""
    output_dir.mkdir(parents=True, exist_ok=True)
    f = open(output_dir / METRICS_FILE, "a")
    f.write(json.dumps({"event": "start", "resume": resume, "timestamp": int(time.time() * 1000)}) + "\n")
    f.flush()
    return f


def append_row(file: IO[str] | None, metrics: Mapping[str, float], step: int, timestamp: int) -> None:
    if file is None:
        return
    row: dict[str, Any] = {"step": int(step), "timestamp": timestamp}
    row.update(metrics)
    # One line per call, flushed: a crash keeps every row logged before it.
    file.write(json.dumps(row) + "\n")
    file.flush()


def _json_lines(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    return rows


def current_rows(path: Path) -> list[dict[str, Any]]:
    """The metric rows of the current training run in metrics.jsonl: those after its last fresh start marker."""
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for row in _json_lines(path):
        if "event" in row:
            if row["event"] == "start" and not row.get("resume"):
                rows.clear()  # an earlier run in the same --output_dir; its rows stay on disk, unused
            continue
        if "step" in row:
            rows.append(row)
    return rows


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {
        k: float(v)
        for k, v in row.items()
        if k not in ("step", "timestamp") and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def read_metrics_jsonl(path: str | Path) -> dict[str, dict[int, float]]:
    """metrics.jsonl -> {metric: {step: value}} for the latest training run recorded there; a step logged twice
    (a resumed run repeating steps after its checkpoint) keeps its last value."""
    out: dict[str, dict[int, float]] = {}
    for row in current_rows(Path(path)):
        for key, value in row_metrics(row).items():
            out.setdefault(key, {})[int(row["step"])] = value
    return out


def metric_values(path: Path) -> list[tuple[str, float, int, int]]:
    """Every metric value of the current run in metrics.jsonl as (key, value, timestamp ms, step)."""
    return [
        (k, v, int(row.get("timestamp", 0)), int(row["step"]))
        for row in current_rows(path)
        for k, v in row_metrics(row).items()
    ]


def read_unsent(path: Path) -> list[dict[str, Any]]:
    return _json_lines(path)


def write_unsent(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic.write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
