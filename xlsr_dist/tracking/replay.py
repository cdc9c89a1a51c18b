"""`python -m xlsr_dist.tracking replay --output_dir DIR [--tracking_uri URI] [--all]`: send to MLflow what a
training run could not.

Sends ``<output_dir>/mlflow_unsent.jsonl`` (creating the run first when the training never reached the server), and
with ``--all`` every row of ``metrics.jsonl`` (e.g. after a SIGKILL left no unsent file). Safe to repeat: a row
already in MLflow is identical (same key, value, step and timestamp) and the store drops it.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from xlsr_dist.config import TrackingConfig
from xlsr_dist.tracking.artifacts import STAGING_DIR, upload_artifact
from xlsr_dist.tracking.client import open_client
from xlsr_dist.tracking.mlflow_tracker import MlflowTracker
from xlsr_dist.tracking.records import METRICS_FILE, RUN_INFO, UNSENT_FILE, metric_values, read_run_info, read_unsent
from xlsr_dist.tracking.redact import redact_text
from xlsr_dist.tracking.uri import DEFAULT_EXPERIMENT, resolve_tracking_uri
from xlsr_dist.tracking.values import MAX_METRICS_PER_BATCH


def replay(output_dir: str | Path, tracking_uri: str = "", all_metrics: bool = False) -> str:
    """Send ``mlflow_unsent.jsonl`` (and with ``all_metrics`` every row of metrics.jsonl) to the run; returns the
    run id. Safe to repeat: rows already in MLflow are identical and dropped by the store."""
    from mlflow.entities import Metric

    out = Path(output_dir)
    path = out / UNSENT_FILE
    rows = read_unsent(path) if path.is_file() else []
    info = read_run_info(out) or {}
    header = next((r for r in rows if r["kind"] == "run"), {})
    recorded = header.get("tracking_uri") or info.get("tracking_uri", "")
    uri = resolve_tracking_uri(TrackingConfig(tracking_uri=tracking_uri), recorded=recorded)
    if not uri:
        raise SystemExit("replay: no usable tracking URI recorded; pass --tracking_uri (or set MLFLOW_TRACKING_URI)")
    experiment = header.get("experiment") or info.get("experiment") or DEFAULT_EXPERIMENT
    metrics = [
        (r["key"], float(r["value"]), int(r["timestamp"]), int(r["step"])) for r in rows if r["kind"] == "metric"
    ]
    if all_metrics:
        metrics += metric_values(out / METRICS_FILE)
    if not rows and not metrics:
        raise SystemExit(f"replay: nothing to send ({path} does not exist; use --all to resend {METRICS_FILE})")

    client = open_client(uri, max_retries=3, timeout_s=60)
    run_id = header.get("run_id") or info.get("run_id")
    start = next((r for r in rows if r["kind"] == "start"), None)
    if run_id is None and start is not None:
        tracker = MlflowTracker(uri, start.get("experiment") or experiment, out, run_name=start.get("run_name", ""))
        run_id = tracker.create_run(client, start)
    if run_id is None:
        raise SystemExit(f"replay: no run id in {path} or {out / RUN_INFO}")
    for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
        client.log_batch(
            run_id, metrics=[Metric(k, v, ts, s) for k, v, ts, s in metrics[i : i + MAX_METRICS_PER_BATCH]]
        )
    for r in rows:
        if r["kind"] == "artifact":
            upload_artifact(client, run_id, r["local_path"], r.get("artifact_path"))
    end = next((r for r in rows if r["kind"] == "end"), None)
    if end is not None:
        client.set_terminated(run_id, status=end["status"])
    if path.is_file():
        path.unlink()
    shutil.rmtree(out / STAGING_DIR, ignore_errors=True)
    print(f"replayed {len(metrics)} metric value(s) to run {run_id} at {redact_text(uri)}")
    return str(run_id)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m xlsr_dist.tracking",
        description="Rank-0 MLflow tracking that never holds training up, never loses a metric and never logs a "
        "secret.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    rp = sub.add_parser("replay", help="send metrics a training run could not deliver to MLflow")
    rp.add_argument("--output_dir", required=True, help="the training run's --output_dir")
    rp.add_argument(
        "--tracking_uri", default="", help="default: the one recorded in --output_dir, else $MLFLOW_TRACKING_URI"
    )
    rp.add_argument("--all", action="store_true", help=f"also resend every row of {METRICS_FILE} (idempotent)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    replay(args.output_dir, args.tracking_uri, all_metrics=args.all)
