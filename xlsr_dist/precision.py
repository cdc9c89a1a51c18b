"""Mixed precision: which mode a DeepSpeed config asks for, what the engine reports about it, and one repair.

Four modes, named after what the model card and the configs in ds_configs/ call them:

- ``amp``  ("Native AMP", ds_configs/zero2_amp.json): fp32 weights, torch.autocast fp16 forward, dynamic loss scaling
  with torch.amp.GradScaler's policy. What HF's Trainer does with ``--fp16``, the card's recipe.
- ``fp16`` (ds_configs/zero2_fp16.json): DeepSpeed's fp16 wrap: the model itself in fp16, an fp32 master partition,
  DeepSpeed's dynamic loss scaler (with hysteresis).
- ``bf16`` (ds_configs/zero2_bf16.json): bf16 weights and activations, fp32 master partition, no loss scaling.
- ``fp32``.

DeepSpeed 0.19.8 routes torch_autocast fp16 under ZeRO-1/2 through a torch.amp.GradScaler that it applies out of
order: the gradient norm it clips with (and reports) is the *scaled* norm, so a clip at 1.0 shrinks every update by
the loss scale (2^16), and an overflowing step is skipped by ZeRO's own non-finite-norm check before the GradScaler
sees it, so the scale never comes down. ``repair_autocast_fp16`` swaps that GradScaler for a loss scaler with the
same policy in the slot ZeRO's fp16 path uses, where unscaling, clipping, overflow voting across ranks, skipping
and checkpointing are all done in the right order (tests/test_precision.py compares it with a plain torch AMP loop).
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager
from typing import Any

import torch

MODES = ("amp", "fp16", "bf16", "fp32")


def mode(ds_config: dict[str, Any]) -> str:
    """'amp', 'fp16', 'bf16' or 'fp32' for a (resolved) DeepSpeed config."""
    if ds_config.get("fp16", {}).get("enabled") is True:
        return "fp16"
    if ds_config.get("bf16", {}).get("enabled") is True:
        return "bf16"
    autocast = ds_config.get("torch_autocast", {})
    if autocast.get("enabled") is True:
        # DeepSpeed's default autocast dtype is bf16; only fp16 autocast is "Native AMP" with loss scaling.
        return (
            "amp" if str(autocast.get("dtype", "bfloat16")) in ("float16", "fp16", "half", "torch.float16") else "bf16"
        )
    return "fp32"


def problems(ds_config: dict[str, Any]) -> list[str]:
    """What is wrong with the precision settings of a DeepSpeed config, one line per problem (empty: fine)."""
    enabled = [k for k in ("fp16", "bf16", "torch_autocast") if ds_config.get(k, {}).get("enabled") is True]
    found = []
    if len(enabled) > 1:
        found.append(f"--deepspeed: {' and '.join(enabled)} are all enabled; enable one precision")
    autocast = ds_config.get("torch_autocast", {})
    if autocast.get("enabled") is True and str(autocast.get("dtype", "bfloat16")) not in (
        "float16",
        "fp16",
        "half",
        "torch.float16",
    ):
        found.append(
            "--deepspeed: torch_autocast.dtype must be float16 (Native AMP); for bf16 use ds_configs/zero2_bf16.json"
        )
    return found


def native_bf16_problem(precision_mode: str, device_type: str, native_bf16: bool, device_name: str) -> str:
    """'' unless bf16 is asked for on a CUDA GPU without native bf16 (V100, T4: torch reports bf16 as supported there,
    by emulation, and zero2_bf16 would run several times slower than fp16); then the problem, naming what to use.
    ``native_bf16``: torch.cuda.is_bf16_supported(including_emulation=False) on that GPU."""
    if precision_mode != "bf16" or device_type != "cuda" or native_bf16:
        return ""
    return (
        f"--deepspeed: bf16 asked for, but {device_name or 'this GPU'} has no native bf16 (torch would emulate it, "
        "several times slower than fp16); use ds_configs/zero2_amp.json (Native AMP, the card's recipe) or "
        "ds_configs/zero2_fp16.json"
    )


def input_dtype(precision_mode: str) -> torch.dtype:
    """The dtype of the model's inputs: the weights' dtype. Under autocast the weights stay fp32."""
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision_mode, torch.float32)


def forward_autocast(precision_mode: str, device: torch.device) -> AbstractContextManager[Any]:
    """What the model's forward runs under outside the engine (evaluation): fp16 autocast for amp, as DeepSpeed's
    engine runs the training forward, so eval measures the model as it trains; nothing for the other modes, whose
    weights already have their dtype."""
    if precision_mode == "amp":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def uses_loss_scaling(precision_mode: str) -> bool:
    """Modes whose overflowing steps are skipped (and tolerated up to --max_nonfinite_steps) rather than fatal."""
    return precision_mode in ("amp", "fp16")


class GradScalerPolicy:
    """torch.amp.GradScaler's dynamic loss scale, shaped as a DeepSpeed loss scaler (``cur_scale``, ``loss_scale``,
    ``dynamic``, ``scale_loss``, ``update_scale``) so ZeRO's fp16 path drives it.

    Policy, as GradScaler's: start at ``init_scale``; every overflowing step multiplies by ``backoff_factor``
    (no hysteresis, unlike DeepSpeed's fp16 scaler); ``growth_interval`` clean steps in a row multiply by
    ``growth_factor``. It is pickled into DeepSpeed checkpoints as the optimizer's loss scaler, so a resumed run
    continues from the scale it had.
    """

    dynamic = True

    def __init__(
        self, init_scale: float, growth_factor: float, backoff_factor: float, growth_interval: int, min_scale: float
    ) -> None:
        self.cur_scale = float(init_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        # GradScaler has no floor; one keeps a run that overflows on every step from scaling to 0 before
        # --max_nonfinite_steps stops it.
        self.min_scale = float(min_scale)
        self.growth_tracker = 0

    @property
    def loss_scale(self) -> float:
        return self.cur_scale

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.cur_scale

    def update_scale(self, overflow: bool) -> None:
        if overflow:
            self.cur_scale = max(self.cur_scale * self.backoff_factor, self.min_scale)
            self.growth_tracker = 0
            return
        self.growth_tracker += 1
        if self.growth_tracker == self.growth_interval:
            self.cur_scale *= self.growth_factor
            self.growth_tracker = 0


def repair_autocast_fp16(engine: Any) -> bool:
    """Make a torch_autocast-fp16 ZeRO-1/2 engine scale, unscale, clip and skip like torch AMP; True if repaired.

    Call right after deepspeed.initialize, on every rank. Other engines (fp16, bf16, fp32, autocast under ZeRO-0,
    whose GradScaler DeepSpeed does drive in the right order) are left alone and False is returned. If DeepSpeed's
    ZeRO optimizer no longer has the parts this relies on, it raises rather than train with the defect above.
    """
    if not (engine.torch_autocast_enabled() and engine.torch_autocast_dtype() == torch.float16):
        return False
    if engine.zero_optimization_stage() not in (1, 2):
        return False
    optimizer = engine.optimizer
    needed = ("torch_autocast_gradscaler", "loss_scaler", "dynamic_loss_scale", "check_grad_overflow")
    missing = [name for name in needed if not hasattr(optimizer, name)]
    scaler = getattr(optimizer, "torch_autocast_gradscaler", None)
    if missing or not isinstance(scaler, torch.amp.GradScaler):
        raise RuntimeError(
            f"xlsr_dist.precision: {type(optimizer).__name__} of this DeepSpeed version lacks "
            f"{missing or ['a torch.amp.GradScaler']}; the torch_autocast fp16 repair was written for 0.19.8. "
            "Check whether DeepSpeed now unscales before clipping and lowers the scale on overflow, then update it."
        )
    policy = GradScalerPolicy(
        init_scale=scaler.get_scale(),
        growth_factor=scaler.get_growth_factor(),
        backoff_factor=scaler.get_backoff_factor(),
        growth_interval=scaler.get_growth_interval(),
        min_scale=1.0,
    )
    # With the GradScaler gone, scale_if_loss falls through to loss_scaler.scale_loss, step() checks overflow on
    # every rank (an all-reduce) and unscale_and_clip_grads divides by loss_scale before clipping: fp16 ZeRO's path.
    optimizer.torch_autocast_gradscaler = None
    optimizer.loss_scaler = policy
    optimizer.dynamic_loss_scale = True
    optimizer.check_grad_overflow = True
    return True


def loss_scale(engine: Any) -> float:
    """The loss scale the next backward uses (1.0 where there is none: bf16, fp32)."""
    optimizer = engine.optimizer
    # An unrepaired autocast engine keeps its GradScaler on the ZeRO optimizer; under ZeRO-0, on the engine.
    for scaler in (
        getattr(optimizer, "torch_autocast_gradscaler", None),
        getattr(engine, "torch_autocast_z0_gradscaler", None),
    ):
        if isinstance(scaler, torch.amp.GradScaler):
            return float(scaler.get_scale())
    scale = getattr(optimizer, "loss_scale", None)
    if scale is None:
        scale = getattr(optimizer, "cur_scale", 1.0)
    return float(scale)


def skipped_steps(engine: Any) -> int:
    """Optimizer steps skipped so far for overflowing (non-finite) gradients; checkpointed by DeepSpeed."""
    return int(engine.skipped_steps)
