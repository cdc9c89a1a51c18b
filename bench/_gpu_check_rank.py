"""One xlsr_dist rank under bench/gpu_check.py: bench/_xlsr_rank.py (the trainer's main with its timing taps),
plus, after every optimizer step, the engine's loss scale, skipped-step count and whether the step was applied,
written to $XLSR_GPU_CHECK_PRECISION as JSON. It reads the engine through the trainer's StepHooks.engine_ready:
nothing is patched.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(1, str(BENCH.parent))

import torch  # noqa: E402
from _record import StepRecorder  # noqa: E402
from _xlsr_rank import BenchHooks  # noqa: E402
from _xlsr_rank import main as rank_main  # noqa: E402

from xlsr_dist import atomic, precision  # noqa: E402

PRECISION_ENV = "XLSR_GPU_CHECK_PRECISION"


class PrecisionHooks(BenchHooks):
    """BenchHooks plus the engine's precision state after each step, rewritten to ``out`` every step so a run that
    dies part-way still leaves what it saw."""

    def __init__(self, recorder: StepRecorder, device: torch.device, profile: bool, out: Path) -> None:
        super().__init__(recorder, device, profile)
        self.out, self.engine, self.history = out, None, []
        self.out.parent.mkdir(parents=True, exist_ok=True)

    def engine_ready(self, model_engine: Any) -> None:
        self.engine = model_engine

    def step_end(self, step: int, last: bool) -> None:
        super().step_end(step, last)
        self.history.append(
            {
                "loss_scale": precision.loss_scale(self.engine),
                "skipped_steps": precision.skipped_steps(self.engine),
                "applied": bool(self.engine.was_step_applied()),
            }
        )
        atomic.write_text(self.out, json.dumps(self.history))


def main() -> None:
    out = Path(os.environ[PRECISION_ENV])
    rank_main(sys.argv[1:], lambda recorder, device, profile: PrecisionHooks(recorder, device, profile, out))


if __name__ == "__main__":
    main()
