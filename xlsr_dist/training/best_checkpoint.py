"""Which complete checkpoint is the best: HF's metric_for_best_model, judged at the steps that have both an
evaluation and a checkpoint, remembered across resumes, recorded where people and tools look.

Only a step with a complete checkpoint can be best (its weights must still exist at the end): the candidates are
the steps where an evaluation and a save coincide, which always includes the run's last step (both happen there).
--load_best_model_at_end, as in HF, requires --save_steps to be a multiple of --eval_steps so every evaluation is a
candidate. Every metric the evaluation reports (loss, WER, CER) is lower-is-better; a tie keeps the earlier step
(HF compares strictly too), and a non-finite value never wins.

Where the best is kept:
- in each checkpoint's client state (COMPLETE.json, written with the checkpoint itself): a resume continues comparing
  against the best known at the checkpoint it resumes from, and rotation never removes that checkpoint;
- ``<output_dir>/best.json`` (atomic): metric, step, value and checkpoint directory, for people and
  ``python -m xlsr_dist.export --checkpoint best``;
- the MLflow run: metrics ``best_step`` and ``best_<metric>`` (e.g. ``best_eval_wer``) at each new best's step, so
  the run's latest values name the best;
- ``<output_dir>/best/`` at the end of training: the best checkpoint's weights (fp32) as a transformers model +
  processor, with ``xlsr_dist_model.json`` naming the step (checkpoint.MODEL_INFO).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlsr_dist import atomic
from xlsr_dist.config.metrics import metric_key

log = logging.getLogger("xlsr_dist")

RECORD = "best.json"
BEST_DIR = "best"


@dataclass(frozen=True)
class Best:
    metric: str
    step: int
    value: float

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "step": self.step, "value": self.value}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Best:
        return cls(str(raw["metric"]), int(raw["step"]), float(raw["value"]))


class BestTracker:
    """The best (step, value) of one metric so far. Every rank keeps one and feeds it the same all-reduced metrics,
    so every rank agrees on which checkpoint rotation must keep."""

    def __init__(self, metric: str) -> None:
        self.metric = metric_key(metric)
        self.best: Best | None = None
        self._evaluated: tuple[int, float] | None = None

    @property
    def step(self) -> int | None:
        return self.best.step if self.best is not None else None

    def observe(self, step: int, metrics: Mapping[str, float]) -> None:
        """An evaluation at ``step``: a candidate once (and if) the same step is saved."""
        value = metrics.get(self.metric)
        self._evaluated = (step, float(value)) if value is not None else None

    def saved(self, step: int) -> Best | None:
        """A checkpoint is being saved at ``step``: the new best when its evaluation beat the best so far, else None."""
        if self._evaluated is None or self._evaluated[0] != step:
            return None
        value = self._evaluated[1]
        if not math.isfinite(value) or (self.best is not None and not value < self.best.value):
            return None
        self.best = Best(self.metric, step, value)
        return self.best

    def state(self) -> dict[str, Any] | None:
        return self.best.to_dict() if self.best is not None else None

    def restore(self, state: Mapping[str, Any] | None, complete_steps: Collection[int]) -> None:
        """The best recorded in the checkpoint a run resumes from; dropped (with a warning) when it was judged by
        another metric or its checkpoint is no longer among the complete ones."""
        if not state:
            return
        recorded = Best.from_dict(state)
        if recorded.metric != self.metric:
            log.warning(
                "best checkpoint so far (step %d) was chosen by %s; this run chooses by %s and starts afresh",
                recorded.step,
                recorded.metric,
                self.metric,
            )
            return
        if recorded.step not in complete_steps:
            log.warning("best checkpoint so far (step %d) no longer exists; choosing afresh", recorded.step)
            return
        self.best = recorded
        log.info("best checkpoint so far: step %d (%s %.4f)", recorded.step, recorded.metric, recorded.value)


def write_record(output_dir: Path, best: Best, checkpoint_dir: Path) -> None:
    atomic.write_json(
        output_dir / RECORD, {**best.to_dict(), "checkpoint": str(checkpoint_dir.relative_to(output_dir))}
    )


def read_record(output_dir: Path) -> dict[str, Any] | None:
    path = output_dir / RECORD
    if not path.is_file():
        return None
    return dict(json.loads(path.read_text(encoding="utf-8")))


def mlflow_metrics(best: Best) -> dict[str, float]:
    return {"best_step": float(best.step), f"best_{best.metric}": best.value}
