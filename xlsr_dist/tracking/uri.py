"""Where to log: the tracking URI and experiment every command uses, and where a local store keeps artifacts.

One order for the tracking URI, in every command (train, replay, export, compare, reference):
``--tracking_uri``, else the URI recorded for the run the command acts on (replay, export), else
``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory. A run's record comes before the
environment because the run lives there (the environment may name another server by now); a command acting on a
recorded run has no local default, since a fresh local store cannot hold it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from xlsr_dist.config import TrackingConfig
from xlsr_dist.tracking.redact import REDACTED

DEFAULT_EXPERIMENT = "xlsr_dist"
_SQLITE = "sqlite:///"


def resolve_tracking_uri(cfg: TrackingConfig, recorded: str | None = None) -> str:
    """The tracking URI: ``cfg.tracking_uri``, else ``recorded``, else $MLFLOW_TRACKING_URI, else (only when the
    command acts on no recorded run, ``recorded`` None) sqlite:///mlflow.db in the working directory.

    ``recorded`` is the URI recorded for the run a command acts on ("" when none was); one recorded with its
    password redacted is skipped. Returns "" when a command acting on a recorded run finds no URI. A relative sqlite
    path is made absolute."""
    uri = cfg.tracking_uri
    if not uri and recorded and REDACTED not in recorded:
        uri = recorded
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return "" if recorded is not None else _SQLITE + str(Path.cwd().resolve() / "mlflow.db")
    return absolute_sqlite(uri)


def resolve_experiment(cfg: TrackingConfig) -> str:
    """--experiment_name, else $MLFLOW_EXPERIMENT_NAME, else 'xlsr_dist'."""
    return cfg.experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME", "") or DEFAULT_EXPERIMENT


def absolute_sqlite(uri: str) -> str:
    # A relative sqlite path would name another database as soon as a tool runs from another directory.
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/") and ":memory:" not in uri:
        return _SQLITE + str(Path(uri[len(_SQLITE) :]).resolve())
    return uri


def is_remote(uri: str) -> bool:
    return uri.split(":", 1)[0].lower() in ("http", "https", "databricks")


def local_artifact_root(uri: str, experiment: str) -> str | None:
    """Artifact location for an experiment created in a local store: ``mlartifacts/<experiment>`` beside the sqlite
    file (or in the working directory); None for a server, which decides itself."""
    if is_remote(uri):
        return None
    if uri.startswith(_SQLITE) and ":memory:" not in uri:
        base = Path(uri[len(_SQLITE) :]).resolve().parent
    else:
        base = Path.cwd().resolve()
    safe = re.sub(r"[^\w.-]+", "_", experiment).strip("._") or DEFAULT_EXPERIMENT
    return (base / "mlartifacts" / safe).as_uri()
