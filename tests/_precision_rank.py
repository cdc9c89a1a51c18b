"""One rank of a tiny DeepSpeed ZeRO-2 training run in a given precision mode, or the plain torch AMP loop it must
match; writes what a trainer can observe each step (loss scale, skipped steps, applied or not, grad norm) to
DIR/rank<N>.json.

    python tests/_precision_rank.py --mode amp|amp_unrepaired|fp16|bf16|fp32|torch_amp --out_dir DIR \
        [--overflow_step 2 --overflow_rank 1]

An overflow is injected the way a trainer test can: the loss of one step on one rank is multiplied by inf before
backward, so that rank's gradients are non-finite and the others' are not (the skip must still happen everywhere).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from xlsr_dist import precision, world  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 6
LR, BETAS, EPS, WEIGHT_DECAY, CLIP = 1e-2, (0.9, 0.999), 1e-8, 0.01, 0.25


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.LayerNorm(64), torch.nn.GELU(), torch.nn.Linear(64, 8))


def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Micro-batches of 4 or more: with 2, the mean loss's per-utterance gradient (up to 1/2) times 2^16 overflows
    fp16 in the last layer's weight gradient; a genuine overflow that torch AMP has on such a micro-batch too."""
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(GLOBAL_BATCH, 16, generator=g), torch.randint(0, 8, (GLOBAL_BATCH,), generator=g)


def ds_config(mode: str, world_size: int) -> dict[str, Any]:
    config: dict[str, Any] = {
        "train_batch_size": GLOBAL_BATCH,
        "train_micro_batch_size_per_gpu": GLOBAL_BATCH // world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": CLIP,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": LR, "betas": list(BETAS), "eps": EPS, "weight_decay": WEIGHT_DECAY, "torch_adam": True},
        },
        # Small buckets: several reduce buckets even for this model, as for XLSR-53 with 5e7.
        "zero_optimization": {
            "stage": 2,
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_scatter": True,
            "allgather_bucket_size": 500,
            "reduce_bucket_size": 500,
        },
        "steps_per_print": 10**9,
    }
    shipped = {"amp": "zero2_amp", "amp_unrepaired": "zero2_amp", "fp16": "zero2_fp16", "bf16": "zero2_bf16"}
    if mode in shipped:
        shipped_config = json.loads(
            (Path(__file__).resolve().parent.parent / f"ds_configs/{shipped[mode]}.json").read_text()
        )
        for key in ("fp16", "bf16", "torch_autocast"):
            if key in shipped_config:
                config[key] = shipped_config[key]
    return config


def flat_params(model: torch.nn.Module) -> list[float]:
    return torch.cat([p.detach().float().reshape(-1) for p in model.parameters()]).tolist()


def run_deepspeed(mode: str, overflow_step: int, overflow_rank: int) -> dict[str, Any]:
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    # DeepSpeed's CPU accelerator says no to fp16 unless oneDNN has fp16 kernels; torch's CPU ops run it anyway.
    get_accelerator().is_fp16_supported = lambda: True
    me = world.World.from_env()
    world.init(me, torch.device("cpu"), timeout_s=120)
    config = ds_config(mode, me.world_size)
    model = tiny_model()
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=list(model.parameters()), config=config)
    repaired = precision.repair_autocast_fp16(engine) if mode != "amp_unrepaired" else False
    precision_mode = precision.mode(config)
    dtype = precision.input_dtype(precision_mode)
    micro = GLOBAL_BATCH // me.world_size
    steps = []
    for step in range(STEPS):
        x, y = global_batch(step)
        x, y = x[me.rank * micro : (me.rank + 1) * micro], y[me.rank * micro : (me.rank + 1) * micro]
        scale_before = precision.loss_scale(engine)
        before = flat_params(engine.module)
        out = engine(x.to(dtype))
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        if step == overflow_step and me.rank == overflow_rank:
            loss = loss * float("inf")
        engine.backward(loss)
        engine.step()
        steps.append(
            {
                "loss": float(loss.item()),
                "scale_before": scale_before,
                "scale_after": precision.loss_scale(engine),
                "skipped_steps": precision.skipped_steps(engine),
                "applied": bool(engine.was_step_applied()),
                "params_changed": flat_params(engine.module) != before,
                "grad_norm": float(engine.get_global_grad_norm()),
                "lr": float(engine.get_lr()[0]),
                "output_dtype": str(out.dtype),
            }
        )
    result = {
        "mode": precision_mode,
        "repaired": repaired,
        "weight_dtype": str(next(engine.module.parameters()).dtype),
        "steps": steps,
        "params": flat_params(engine.module),
    }
    world.finish()
    return result


def run_torch_amp(overflow_step: int) -> dict[str, Any]:
    """HF Trainer's --fp16 ("Native AMP") on one process: autocast, GradScaler, unscale, clip, AdamW."""
    model = tiny_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY)
    scaler = torch.amp.GradScaler("cpu")
    steps = []
    for step in range(STEPS):
        x, y = global_batch(step)
        optimizer.zero_grad(set_to_none=True)
        scale_before = float(scaler.get_scale())
        with torch.autocast("cpu", dtype=torch.float16):
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        if step == overflow_step:
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        scaler.step(optimizer)
        scaler.update()
        steps.append(
            {
                "loss": float(loss.item()),
                "scale_before": scale_before,
                "scale_after": float(scaler.get_scale()),
                "applied": float(scaler.get_scale()) >= scale_before,
                "grad_norm": float(norm),
                "output_dtype": str(out.dtype),
            }
        )
    return {"mode": "torch_amp", "weight_dtype": "torch.float32", "steps": steps, "params": flat_params(model)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", required=True, choices=["amp", "amp_unrepaired", "fp16", "bf16", "fp32", "torch_amp"])
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--overflow_step", type=int, default=-1)
    parser.add_argument("--overflow_rank", type=int, default=0)
    args = parser.parse_args()
    if args.mode == "torch_amp":
        rank, result = 0, run_torch_amp(args.overflow_step)
    else:
        rank, result = world.World.from_env().rank, run_deepspeed(args.mode, args.overflow_step, args.overflow_rank)
    Path(args.out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
