"""DeepSpeed config resolution and engine construction.

The DeepSpeed JSON says how (ZeRO stage, precision, buckets); xlsr_dist's flags say what (batch, optimizer
hyperparameters). "auto" keys are filled from the flags and the world size; an explicit key that disagrees with a flag
is an error, never silently overridden, so a config file cannot quietly change the recipe.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import torch

import xlsr_dist.precision
from xlsr_dist.config import BatchPlan, Config, ConfigError, resolve_path
from xlsr_dist.forward import bucket_length, padded_shapes

PRECISION_CONFIGS = "ds_configs/zero2_bf16.json or ds_configs/zero2_fp32.json"


def _accelerator_supports(dtype: str, device: torch.device) -> bool:
    if device.type == "cuda":
        return dtype != "bf16" or torch.cuda.is_bf16_supported()
    try:
        from deepspeed.accelerator import get_accelerator

        acc = get_accelerator()
        return bool(acc.is_fp16_supported() if dtype == "fp16" else acc.is_bf16_supported())
    except Exception:  # an accelerator that cannot even answer cannot run it either
        return dtype == "bf16"


def _fill(section: dict[str, Any], key: str, value: Any, where: str, flag: str, problems: list[str]) -> None:
    """Fill an "auto"/missing key; report a disagreeing explicit value."""
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
        return
    same = current == value
    if isinstance(value, float) or isinstance(current, float):
        try:
            same = abs(float(current) - float(value)) <= 1e-12 * max(1.0, abs(float(value)))
        except (TypeError, ValueError):
            same = False
    if isinstance(value, list) and isinstance(current, (list, tuple)):
        same = [float(c) for c in current] == [float(v) for v in value]
    if not same:
        problems.append(
            f'--deepspeed: {where} is {current!r} but {flag} gives {value!r}; set it to "auto" or change {flag}'
        )


def resolve_ds_config(cfg: Config, plan: BatchPlan, device: torch.device) -> dict[str, Any]:
    """Load --deepspeed and fill it for this world; raise ConfigError listing every conflict."""
    path = resolve_path(cfg.train.deepspeed)
    if path is None:
        raise ConfigError([f"--deepspeed: {cfg.train.deepspeed} not found"])
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError([f"--deepspeed: {path} is not valid JSON ({exc})"]) from exc
    ds = copy.deepcopy(raw)
    problems = _fill_batch(ds, cfg, plan) + _fill_optimizer(ds, cfg)
    if "scheduler" in ds:
        problems.append(
            "--deepspeed: remove the 'scheduler' block; xlsr_dist sets HF's linear warm-up/decay schedule from "
            "--learning_rate and --warmup_steps (DeepSpeed's WarmupDecayLR warms up logarithmically by default)"
        )
    problems.extend(xlsr_dist.precision.problems(ds))
    problems.extend(_hardware_problems(ds, path.name, device))
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        problems.append(
            f"--deepspeed: zero_optimization.stage {stage}: xlsr_dist supports ZeRO stages 0-2 "
            "(stage 3 shards parameters, which checkpoint export does not gather)"
        )
    ds.setdefault("steps_per_print", 10**9)
    if problems:
        raise ConfigError(problems)
    return ds


def _fill_batch(ds: dict[str, Any], cfg: Config, plan: BatchPlan) -> list[str]:
    problems: list[str] = []
    _fill(ds, "train_batch_size", plan.global_batch, "train_batch_size", "--global_batch_size", problems)
    _fill(
        ds,
        "train_micro_batch_size_per_gpu",
        plan.micro_batch,
        "train_micro_batch_size_per_gpu",
        "--per_device_train_batch_size (and the world size)",
        problems,
    )
    _fill(
        ds,
        "gradient_accumulation_steps",
        plan.grad_accum,
        "gradient_accumulation_steps",
        "the world size and --per_device_train_batch_size",
        problems,
    )
    _fill(ds, "gradient_clipping", cfg.train.max_grad_norm, "gradient_clipping", "--max_grad_norm", problems)
    return problems


def _fill_optimizer(ds: dict[str, Any], cfg: Config) -> list[str]:
    t = cfg.train
    problems: list[str] = []
    optimizer = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if str(optimizer.get("type", "")).lower() not in ("adamw", "adam"):
        problems.append(f"--deepspeed: optimizer.type {optimizer.get('type')!r}: xlsr_dist's recipe is AdamW")
    params = optimizer.setdefault("params", {})
    _fill(params, "lr", t.learning_rate, "optimizer.params.lr", "--learning_rate", problems)
    _fill(
        params, "betas", [t.adam_beta1, t.adam_beta2], "optimizer.params.betas", "--adam_beta1/--adam_beta2", problems
    )
    _fill(params, "eps", t.adam_epsilon, "optimizer.params.eps", "--adam_epsilon", problems)
    _fill(params, "weight_decay", t.weight_decay, "optimizer.params.weight_decay", "--weight_decay", problems)
    params.setdefault("torch_adam", True)
    return problems


def _hardware_problems(ds: dict[str, Any], file_name: str, device: torch.device) -> list[str]:
    """The config's precision on this accelerator."""
    prec = xlsr_dist.precision.mode(ds)
    problems: list[str] = []
    # amp keeps fp32 weights and autocasts: torch runs that on a CPU too, so only fp16/bf16 weights are checked.
    if prec in ("fp16", "bf16") and not _accelerator_supports(prec, device):
        problems.append(
            f"--deepspeed: {file_name} asks for {prec}, which this {device.type.upper()} accelerator does not "
            f"support; use {PRECISION_CONFIGS}"
            if prec == "fp16"
            else f"--deepspeed: {file_name} asks for {prec}, which this accelerator does not support; "
            "use ds_configs/zero2_fp32.json (or zero2_fp16.json on an NVIDIA GPU)"
        )
    if prec == "bf16" and device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        problem = xlsr_dist.precision.native_bf16_problem(prec, device.type, native, torch.cuda.get_device_name(device))
        if problem:
            problems.append(problem)
    return problems


def initialize(model: torch.nn.Module, ds_config: dict[str, Any], warmup_steps: int, total_steps: int) -> Any:
    """deepspeed.initialize with transformers' linear warm-up/decay schedule; returns the engine
    (engine.lr_scheduler is the schedule)."""
    import deepspeed
    from transformers import get_linear_schedule_with_warmup

    engine, _, _, _ = deepspeed.initialize(
        model=model,
        model_parameters=[p for p in model.parameters() if p.requires_grad],
        config=ds_config,
        # DeepSpeed steps this only on optimizer steps it did not skip (fp16 overflow), as HF's Trainer does.
        lr_scheduler=lambda optimizer: get_linear_schedule_with_warmup(optimizer, warmup_steps, total_steps),
    )
    # DeepSpeed 0.19.8 applies torch_autocast's GradScaler out of order under ZeRO-1/2 (clips scaled gradients,
    # never lowers the scale after an overflow): precision.py puts GradScaler's policy where ZeRO's fp16 path runs it.
    xlsr_dist.precision.repair_autocast_fp16(engine)
    return engine


def grad_norm(engine: Any) -> float:
    norm = engine.get_global_grad_norm()
    if norm is None:
        return float("nan")
    return float(norm.item() if isinstance(norm, torch.Tensor) else norm)


def current_lr(engine: Any) -> float:
    return float(engine.lr_scheduler.get_last_lr()[0])


def compile_model(engine: Any) -> None:
    """--torch_compile: torch.compile the engine's module in place through DeepSpeed's supported path
    (engine.compile(), the accelerator's default backend: inductor). The module's parameter names do not change, so
    checkpoints, resume and export are those of an eager run.

    SpecAugment's masks go through ``model.graph_friendly_time_masking`` first (HF's boolean index assignment breaks
    the graph), and a trained feature encoder through ``model.graph_friendly_feature_encoder`` (HF's requires_grad
    change on the audio breaks it), so the whole forward is one graph. Shapes are static (``dynamic=False``):
    forwards are padded to bucket lengths (forward.bucket_length), so each (batch size, bucket length, train/eval)
    compiles once, and torch's recompile limit is raised to cover every bucket in both modes. Automatic dynamic
    shapes were measured worse here: the length went dynamic after the second shape but the SpecAugment mask's frame
    count stayed specialised, so new lengths kept recompiling (6 graphs in 12 tiny steps) -- and a static graph is
    the faster one to run."""
    import torch._dynamo

    from xlsr_dist.model import graph_friendly_feature_encoder, graph_friendly_time_masking

    graph_friendly_time_masking(engine.module)
    graph_friendly_feature_encoder(engine.module)
    per_mode = bucket_count(60 * 16000)
    # Batch sizes: a training micro-batch and evaluation's, and a short last evaluation batch, per bucket and mode.
    limit = max(int(torch._dynamo.config.recompile_limit), 4 * per_mode)
    torch._dynamo.config.recompile_limit = limit
    torch._dynamo.config.accumulated_recompile_limit = max(int(torch._dynamo.config.accumulated_recompile_limit), limit)
    engine.compile(compile_kwargs={"dynamic": False})


def bucket_count(max_samples: int) -> int:
    """How many bucket lengths cover utterances up to ``max_samples``."""
    return len({bucket_length(n) for n in range(1, max_samples + 1, 160)} | {bucket_length(max_samples)})


class CompileCounts:
    """Graphs torch.compile has built in this process (torch._dynamo's counters): all of them, and those built after
    the first training step, when only a shape not seen before -- a new (batch size, bucket length, train/eval),
    counted by forward.padded_shapes -- should compile: recompilations <= new shapes."""

    def __init__(self) -> None:
        self.after_first_step: int | None = None
        self.shapes_at_first_step: int | None = None

    @staticmethod
    def graphs() -> int:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])

    def first_step_done(self) -> None:
        if self.after_first_step is None:
            self.after_first_step = self.graphs()
            self.shapes_at_first_step = padded_shapes()

    def metrics(self) -> dict[str, float]:
        total = self.graphs()
        shapes = padded_shapes()
        return {
            "torch_compile_graphs": float(total),
            "torch_compile_recompilations": float(total - (self.after_first_step or total)),
            "torch_compile_shapes": float(shapes),
            "torch_compile_new_shapes": float(shapes - (self.shapes_at_first_step or shapes)),
        }
