"""An evaluation's results in MLflow: ``test/<set>/<metric>`` metrics and the set's report files as artifacts
under ``test/<set>/``, on the training run the model came from (its run_info.json) or else on a new run tagged
``xlsr_dist.kind=evaluation``.

Rank 0 only, synchronous (an evaluation is not held up by anything but this), and never fatal: the results are on
disk whatever happens here, so a failure is one printed line naming the server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xlsr_dist import tracking
from xlsr_dist.config import TrackingConfig

KIND_TAG = "xlsr_dist.kind"
KIND = "evaluation"
PREFIX = "test"


def metric_key(set_name: str, metric: str) -> str:
    return f"{PREFIX}/{set_name}/{metric}"


def artifact_dir(set_name: str) -> str:
    return f"{PREFIX}/{set_name}"


def resolve_uri(flag: str, run_info: Mapping[str, Any] | None) -> str:
    """--tracking_uri, else the training run's (unless it was redacted when recorded), else what training would
    use: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory."""
    recorded = str((run_info or {}).get("tracking_uri", ""))
    if not flag and recorded and tracking.REDACTED not in recorded:
        return recorded
    return tracking.resolve_tracking_uri(TrackingConfig(tracking_uri=flag))


def _training_run(client: Any, run_id: str) -> str | None:
    """``run_id`` when that run exists and is not deleted, else None (with a line saying why)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        print(f"training run {run_id} not usable ({tracking.short_error(exc)}); logging to a new evaluation run")
        return None
    if run.info.lifecycle_stage != "active":
        print(f"training run {run_id} is deleted; logging to a new evaluation run")
        return None
    return run_id


def log_results(
    uri: str,
    training_run_id: str | None,
    experiment_name: str,
    step: int,
    metrics_by_set: Mapping[str, Mapping[str, float]],
    artifacts_by_set: Mapping[str, Sequence[Path]],
    params: Mapping[str, Any],
) -> str | None:
    """Log the results; returns the run id, or None after printing why nothing could be logged."""
    from mlflow.entities import Metric, Param

    try:
        client = tracking.open_client(uri, max_retries=1, timeout_s=60)
        run_id = _training_run(client, training_run_id) if training_run_id else None
        new_run = run_id is None
        if new_run:
            experiment = tracking.resolve_experiment(TrackingConfig(experiment_name=experiment_name))
            experiment_id = tracking.get_or_create_experiment(client, experiment, uri)
            clean, _ = tracking.sanitize(params, tracking.MAX_PARAM_VALUE)
            tags = {KIND_TAG: KIND, **({"xlsr_dist.training_run_id": training_run_id} if training_run_id else {})}
            run_id = client.create_run(experiment_id, tags=tags).info.run_id
            params_list = [Param(k, v) for k, v in clean.items()]
            for i in range(0, len(params_list), tracking.MAX_PARAMS_TAGS_PER_BATCH):
                client.log_batch(run_id, params=params_list[i : i + tracking.MAX_PARAMS_TAGS_PER_BATCH])
        timestamp = int(time.time() * 1000)
        metrics = [
            Metric(metric_key(name, key), float(value), timestamp, step)
            for name, values in metrics_by_set.items()
            for key, value in values.items()
        ]
        for i in range(0, len(metrics), tracking.MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[i : i + tracking.MAX_METRICS_PER_BATCH])
        for name, files in artifacts_by_set.items():
            for f in files:
                client.log_artifact(run_id, str(f), artifact_dir(name))
        if new_run:
            client.set_terminated(run_id, status="FINISHED")
    except Exception as exc:  # noqa: BLE001 - the results are on disk already; MLflow is where they are shown
        where = tracking.redact_text(uri)
        print(f"not logged to MLflow at {where}: {tracking.short_error(exc)}", file=sys.stderr)
        return None
    return str(run_id)
