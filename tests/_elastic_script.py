"""One rank of a tiny DeepSpeed ZeRO-2 training run that can save half way and resume on another world size
(tests/test_elastic.py starts it once per rank).

Every step trains on the same global batch of 8 samples whatever the world size: rank r takes samples r::world,
split into micro-batches of 2 with gradient accumulation, so micro x accumulation x world = 8. Rank 0 prints one
line per step, ``STEP <n> <loss> <lr>``, the loss averaged over the global batch, and after a resume
``RESUMED <json>`` (what was restored).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from xlsr_dist import world
from xlsr_dist.training import elastic
from xlsr_dist.world import World

GLOBAL_BATCH = 8
MICRO_BATCH = 2
FEATURES = 13
CLASSES = 5


class TinyNet(torch.nn.Module):
    """Odd sizes, so ZeRO pads its flat partitions differently for each world size; a buffer and a frozen layer,
    which no optimizer partition holds."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = torch.nn.Linear(FEATURES, FEATURES)
        self.frozen.requires_grad_(False)
        self.body = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 37), torch.nn.GELU(), torch.nn.Linear(37, 29), torch.nn.GELU()
        )
        self.head = torch.nn.Linear(29, CLASSES)
        self.register_buffer("offset", torch.zeros(FEATURES))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.frozen(x) + self.offset.to(x.dtype)))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(GLOBAL_BATCH, FEATURES, generator=generator)
    y = torch.randint(0, CLASSES, (GLOBAL_BATCH,), generator=generator)
    return x, y


def ds_config(world_size: int, precision: str) -> dict:
    return {
        "train_batch_size": GLOBAL_BATCH,
        "train_micro_batch_size_per_gpu": MICRO_BATCH,
        "gradient_accumulation_steps": GLOBAL_BATCH // (MICRO_BATCH * world_size),
        "gradient_clipping": 1.0,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": 0.01, "betas": [0.9, 0.98], "eps": 1e-8, "weight_decay": 0.01, "torch_adam": True},
        },
        "zero_optimization": {"stage": 2, "reduce_bucket_size": 500, "allgather_bucket_size": 500},
        "bf16": {"enabled": precision == "bf16"},
        "steps_per_print": 10**9,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--save_at", type=int, default=0)
    parser.add_argument("--resume", default="")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = parser.parse_args()
    # Here, not at the top: tests/test_elastic.py imports this module for TinyNet and ds_config, and pytest's
    # collection of the whole suite should not pay for importing DeepSpeed.
    import deepspeed

    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(name)s: %(message)s")
    here = World.from_env()
    world.init(here, torch.device("cpu"), timeout_s=600)
    torch.manual_seed(0)
    model = TinyNet()
    if not args.resume:
        # Trained-looking frozen weights and buffer, so a resume that rebuilt them from the seed would show.
        with torch.no_grad():
            model.frozen.weight.mul_(3.0)
            model.offset.fill_(0.5)
    config = ds_config(here.world_size, args.precision)
    plan = None
    if args.resume:
        plan = elastic.prepare_resume(Path(args.resume), config, here.world_size, here.is_main, world.barrier)
        elastic.check_model(Path(args.resume), model)
        config = plan.configure(config)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=config,
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 4)),
    )
    start = 0
    if plan is not None:
        client = elastic.load(engine, plan)
        start = int(client["xlsr_test"]["step"])
        if here.is_main:
            restored = {
                "step": start,
                "universal": plan.universal,
                "global_steps": engine.global_steps,
                "lr": engine.lr_scheduler.get_last_lr()[0],
                "client": client["xlsr_test"],
                "offset": float(engine.module.offset[0]),
                "frozen_sum": float(engine.module.frozen.weight.sum()),
            }
            print("RESUMED " + json.dumps(restored), flush=True)
    elif here.is_main:
        print(f"FROZEN_SUM {float(engine.module.frozen.weight.sum())!r}", flush=True)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    accumulation = engine.gradient_accumulation_steps()
    for step in range(start + 1, args.steps + 1):
        x, y = global_batch(step)
        mine_x, mine_y = x[here.rank :: here.world_size], y[here.rank :: here.world_size]
        total = torch.zeros(1, dtype=torch.float64)
        for micro in range(accumulation):
            part = slice(micro * MICRO_BATCH, (micro + 1) * MICRO_BATCH)
            loss = torch.nn.functional.cross_entropy(engine(mine_x[part].to(dtype)).float(), mine_y[part])
            engine.backward(loss)
            engine.step()
            total += loss.detach().double()
        torch.distributed.all_reduce(total)
        lr = engine.lr_scheduler.get_last_lr()[0]
        if here.is_main:
            print(f"STEP {step} {float(total) / (accumulation * here.world_size)!r} {lr!r}", flush=True)
        if step == args.save_at:
            engine.save_checkpoint(
                str(Path(args.out) / "checkpoints"),
                tag=f"step-{step:07d}",
                client_state={"xlsr_test": {"step": step, "note": "client state survives"}},
                save_latest=False,
            )
            world.barrier()
    world.finish()


if __name__ == "__main__":
    main()
