"""One rank of `python -m xlsr_dist.train` for the mixed-precision tests: fp16 declared supported on this CPU and
overflows injected at chosen steps on one rank.

    python tests/_fp16_train.py --overflow_steps 3,4 --overflow_rank 1 --record DIR -- <xlsr_dist.train flags>

``--overflow_steps``: optimizer steps (counted from 1, as logged) whose loss is multiplied by inf on rank
``--overflow_rank`` before backward, so that rank's gradients are non-finite and the other's are not; ``3-`` is
every step from 3 on. ``--record``: each rank writes DIR/rank<N>_steps.json after every step: the engine's skipped-
step count and loss scale as that rank sees them (the trainer logs them from rank 0 only). Only tests declare fp16
support on a CPU: DeepSpeed's CPU accelerator answers None (no oneDNN fp16 kernels), and xlsr_dist refuses
zero2_fp16 there for users, while torch's CPU ops run it. ``--pretrain``: the same overflows in
`python -m xlsr_dist.pretrain` (its micro-batch loss times inf) instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

from xlsr_dist import ctc, precision, train, world
from xlsr_dist.training import trainer  # noqa: E402


def overflowing(spec: str) -> Any:
    """'3,4' -> steps 3 and 4; '3-' -> every step from 3."""
    if spec.endswith("-"):
        first = int(spec[:-1])
        return lambda step: step >= first
    steps = {int(s) for s in spec.split(",") if s}
    return lambda step: step in steps


def inject(is_overflow_step: Any, overflow_rank: int, record: Path | None) -> None:
    current = {"step": 0}
    rank = world.World.from_env().rank
    train_step, batch_loss = trainer.Trainer.train_step, ctc.batch_loss
    seen: list[dict[str, Any]] = []

    def counted_train_step(self: trainer.Trainer, micro_batches: Any) -> Any:
        current["step"] = self.step + 1
        result = train_step(self, micro_batches)
        if record is not None:
            engine = self.model_engine
            seen.append(
                {
                    "step": current["step"],
                    "skipped_steps": precision.skipped_steps(engine),
                    "loss_scale": precision.loss_scale(engine),
                    "weight_dtype": str(next(engine.module.parameters()).dtype),
                }
            )
            (record / f"rank{rank}_steps.json").write_text(json.dumps(seen))
        return result

    def overflowing_batch_loss(losses: torch.Tensor, valid: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        loss = batch_loss(losses, valid, reduction)
        if rank == overflow_rank and is_overflow_step(current["step"]):
            return loss * float("inf")
        return loss

    trainer.Trainer.train_step = counted_train_step  # type: ignore[method-assign]
    ctc.batch_loss = overflowing_batch_loss


def inject_pretraining(is_overflow_step: Any, overflow_rank: int) -> None:
    """The same overflow for `xlsr_dist.pretrain`: its micro-batch loss (a sum over masked frames) times inf."""
    from xlsr_dist.training.pretraining import run

    current = {"step": 0}
    rank = world.World.from_env().rank
    train_step, forward = run.train_step, run.pretraining_forward

    def counted_train_step(parts: Any, step: int, *args: Any, **kwargs: Any) -> Any:
        current["step"] = step
        return train_step(parts, step, *args, **kwargs)

    def overflowing_forward(*args: Any, **kwargs: Any) -> Any:
        sums = forward(*args, **kwargs)
        if rank == overflow_rank and is_overflow_step(current["step"]):
            return dataclasses.replace(sums, loss=sums.loss * float("inf"))
        return sums

    run.train_step = counted_train_step  # type: ignore[assignment]
    run.pretraining_forward = overflowing_forward  # type: ignore[assignment]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--overflow_steps", default="")
    parser.add_argument("--overflow_rank", type=int, default=0)
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--pretrain", action="store_true", help="run xlsr_dist.pretrain instead of xlsr_dist.train")
    args, rest = parser.parse_known_args()
    get_accelerator().is_fp16_supported = lambda: True
    flags = [a for a in rest if a != "--"]
    try:
        if args.pretrain:
            from xlsr_dist import pretrain

            inject_pretraining(overflowing(args.overflow_steps), args.overflow_rank)
            pretrain.main(flags)  # exits
        inject(overflowing(args.overflow_steps), args.overflow_rank, args.record)
        train.main(flags)
    except SystemExit as done:
        train.exit_now(done.code if isinstance(done.code, int) else 1)


if __name__ == "__main__":
    main()
