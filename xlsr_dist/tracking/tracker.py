"""What training logs through, and which tracker each rank gets: ``build_tracker`` gives rank 0 the MLflow tracker
(mlflow_tracker.py) with ``--report_to mlflow``, a LocalTracker that only keeps ``<output_dir>/metrics.jsonl`` with
``--report_to none``, and every other rank a NullTracker, so the training loop calls the same methods on every rank
and only the sink differs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import IO, Any, Protocol

from xlsr_dist.config import TrackingConfig
from xlsr_dist.tracking.mlflow_tracker import MlflowTracker
from xlsr_dist.tracking.records import append_row, open_record
from xlsr_dist.tracking.uri import resolve_experiment, resolve_tracking_uri
from xlsr_dist.tracking.values import clean_metrics
from xlsr_dist.world import World

# The metrics training logs, under these MLflow names.
METRIC_NAMES = (
    "loss",
    "learning_rate",
    "grad_norm",
    "loss_scale",
    "skipped_steps",
    "epoch",
    "eval_loss",
    "eval_wer",
    "eval_cer",
    "throughput",
)


class Tracker(Protocol):
    run_id: str | None

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None: ...

    def close(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Ranks other than 0: does nothing."""

    run_id: str | None = None

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        self.run_id = resume_run_id
        return resume_run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        pass

    def close(self, status: str = "FINISHED") -> None:
        pass


class LocalTracker(NullTracker):
    """Rank 0 with --report_to none: keeps ``metrics.jsonl`` (export reads it), talks to nobody."""

    def __init__(self, output_dir: str | Path) -> None:
        self.output_dir = Path(output_dir)
        self._file: IO[str] | None = None
        self._warned: set[str] = set()

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str | None:
        self._file = open_record(self.output_dir, resume=resume_run_id is not None)
        self.run_id = resume_run_id
        return resume_run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        append_row(self._file, clean_metrics(metrics, self._warned), step, int(time.time() * 1000))

    def close(self, status: str = "FINISHED") -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def build_tracker(world: World, cfg: TrackingConfig, output_dir: str) -> Tracker:
    """MLflow on rank 0 when --report_to mlflow; a local metrics.jsonl only with --report_to none; nothing on the
    other ranks."""
    if not world.is_main:
        return NullTracker()
    if cfg.report_to != "mlflow":
        return LocalTracker(output_dir)
    return MlflowTracker(resolve_tracking_uri(cfg), resolve_experiment(cfg), output_dir, run_name=cfg.run_name)
