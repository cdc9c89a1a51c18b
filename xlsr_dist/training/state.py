"""The train state: what a checkpoint carries besides DeepSpeed's own files, saved and restored in one place.

DeepSpeed restores the model, optimizer, LR schedule and loss scaler; checkpoint.py the random streams. Everything
else a run needs to continue where it stopped (the step, the data stream's position, the best checkpoint so far, the
MLflow run it logs to) is one ``TrainState``: ``state_dict()`` is the client state written with every checkpoint
(COMPLETE.json), ``load_state_dict()`` reads it back, as torchtitan's Stateful train state does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from xlsr_dist.data.stream import DataState
from xlsr_dist.training.best_checkpoint import BestTracker


@dataclass(kw_only=True)
class TrainState:
    """Where the run stands; the loop advances ``step`` and ``data``, evaluation and saving update ``best``."""

    step: int
    data: DataState
    """the data stream's position: the next step runs batch ``step_in_epoch`` of ``epoch``"""
    best: BestTracker
    mlflow_run_id: str | None
    """the MLflow run this run logs to: the resumed one, then the tracker's once it has one"""
    world_size: int

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint's client state (COMPLETE.json's keys, in this order; the file format readers know)."""
        return {
            "step": self.step,
            "data_state": self.data.to_dict(),
            "mlflow_run_id": self.mlflow_run_id,
            "world_size": self.world_size,
            "best": self.best.state(),
        }

    def load_state_dict(self, saved: Mapping[str, Any], *, complete_steps: Collection[int], same_run: bool) -> None:
        """Continue from a checkpoint's client state. ``complete_steps``: the checkpoints that still exist (a best
        rotated away is dropped); ``same_run``: the checkpoint is this --output_dir's own; another run's checkpoint
        starts a new MLflow run rather than adding to the old one. ``world_size`` stays this run's: an elastic
        resume continues on another number of ranks."""
        self.best.restore(saved.get("best"), complete_steps)
        self.step = int(saved["step"])
        self.mlflow_run_id = saved.get("mlflow_run_id") if same_run else None
        self.data = DataState.from_dict(saved["data_state"])
