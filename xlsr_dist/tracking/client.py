"""Talking to MLflow: a client that gives up quickly on a dead server, experiments, and which errors no retry fixes.

MLflow is imported only when a client is opened: a cold import takes seconds.
"""

from __future__ import annotations

import os
from typing import Any

from xlsr_dist.tracking.redact import redact_text
from xlsr_dist.tracking.uri import local_artifact_root

REFERENCE_TAG = "xlsr_dist.reference"
# MLflow 3 sorts experiments into GenAI and model training by this tag (its UI still opens on the last-used mode).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# Errors that no retry can fix; everything else (connection refused, timeouts, 5xx) is treated as an outage.
_PERMANENT_ERROR_CODES = frozenset(
    {
        "INVALID_PARAMETER_VALUE",
        "RESOURCE_DOES_NOT_EXIST",
        "BAD_REQUEST",
        "INVALID_STATE",
        "RESOURCE_ALREADY_EXISTS",
        "MALFORMED_REQUEST",
    }
)


def fail_fast_http(max_retries: int = 0, timeout_s: int = 20) -> None:
    """Make MLflow's HTTP client give up quickly on a dead server (its defaults retry for about 4 minutes).

    Process-wide (MLflow reads these variables on every request); values the user exported are kept.
    The tracker does its own retrying, so its client needs none.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(max_retries))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(timeout_s))


def open_client(uri: str, max_retries: int = 0, timeout_s: int = 20) -> Any:
    """An MlflowClient for ``uri`` with fail-fast HTTP settings."""
    fail_fast_http(max_retries, timeout_s)
    if redact_text(uri) != uri:
        # MLflow prints "View run ... at: <tracking URI>/#/..." to stdout when a run ends: with the URI's password.
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client: Any, name: str, uri: str) -> str:
    """Experiment id for ``name``; created (with a local artifact root for local stores) when missing."""
    from mlflow.exceptions import MlflowException

    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise MlflowException(f"MLflow experiment {name!r} is deleted; restore it or use another --experiment_name")
        return str(exp.experiment_id)
    try:
        return str(
            client.create_experiment(
                name, artifact_location=local_artifact_root(uri, name), tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}
            )
        )
    except MlflowException as exc:
        if error_code(exc) != "RESOURCE_ALREADY_EXISTS":  # another process created it in between
            raise
        exp = client.get_experiment_by_name(name)
        return str(exp.experiment_id)


def error_code(exc: BaseException) -> str:
    return str(getattr(exc, "error_code", "") or "")


def is_permanent(exc: BaseException) -> bool:
    return error_code(exc) in _PERMANENT_ERROR_CODES


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return redact_text(line[:300])
