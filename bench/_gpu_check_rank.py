"""One xlsr_dist rank under bench/gpu_check.py: bench/_xlsr_rank.py (the trainer's main with its timing taps),
plus, after every optimizer step of the DeepSpeed engine, the loss scale, the skipped-step count and whether the step
was applied, written to $XLSR_GPU_CHECK_PRECISION as JSON.

The tap wraps DeepSpeedEngine.step (the class DeepSpeed returns), so it does not depend on how the trainer is built.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

PRECISION_ENV = "XLSR_GPU_CHECK_PRECISION"


def main() -> None:
    from deepspeed.runtime.engine import DeepSpeedEngine

    from xlsr_dist import precision

    history: list[dict[str, Any]] = []
    original_step = DeepSpeedEngine.step

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        before = self.global_steps
        result = original_step(self, *args, **kwargs)
        if self.global_steps != before:  # an optimizer step (the last micro-batch of the accumulation)
            history.append(
                {
                    "loss_scale": precision.loss_scale(self),
                    "skipped_steps": precision.skipped_steps(self),
                    "applied": bool(self.was_step_applied()),
                }
            )
        return result

    DeepSpeedEngine.step = step  # type: ignore[method-assign]
    out = Path(os.environ[PRECISION_ENV])
    sys.argv = [str(BENCH / "_xlsr_rank.py"), *sys.argv[1:]]
    try:
        runpy.run_path(str(BENCH / "_xlsr_rank.py"), run_name="__main__")
    finally:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(history))


if __name__ == "__main__":
    main()
