"""One pretraining run: data, model, the DeepSpeed engine, the loop, the model left for fine-tuning.

Each optimizer step: this rank's micro-batches (pretraining/data.py) -> the draws of every micro-batch (masks,
negatives, Gumbel noise from (seed, step, utterance id)) -> one all-reduce of the masked-frame count N of the whole
global batch -> per micro-batch, transformers' loss (a sum over its masked frames) times world_size * grad_accum / N,
backward, step. DeepSpeed divides by grad_accum and averages over the ranks, so the gradient is that of
(sum over every masked frame of the global batch) / N: the same for any world size, as the HF example's division by
the masked frames of all processes intends. The Gumbel temperature follows max(2.0 * 0.999995**step, 0.5).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import set_seed

from xlsr_dist import atomic, precision, tracking
from xlsr_dist.config import BatchPlan, Config
from xlsr_dist.config.pretrain import PretrainConfig
from xlsr_dist.data.problems import DataProblem, too_few_to_train
from xlsr_dist.model import count_parameters, output_frames
from xlsr_dist.run_dir import FINAL
from xlsr_dist.training import checkpoint, elastic, engine, layerdrop, setup
from xlsr_dist.training.loop import NonFiniteGuard
from xlsr_dist.training.pretraining.data import PretrainStream, audio_catalog
from xlsr_dist.training.pretraining.model import build_pretraining_model, save_for_finetuning
from xlsr_dist.training.pretraining.objective import Objective, Sums, install_shared_noise, pretraining_forward
from xlsr_dist.world import World, all_reduce_sum, barrier


class StopSignal(Protocol):
    """A stop request (xlsr_dist.train.StopRequest): set by SIGUSR1/SIGTERM on this rank; the step's sums share it."""

    @property
    def requested(self) -> bool: ...


log = logging.getLogger("xlsr_dist")
KIND = "pretraining"

# Summed over micro-batches and ranks each step, in this order (one all-reduce).
# "nonfinite": micro-batches whose loss was not finite; "stop": ranks that caught a stop signal (SIGUSR1/SIGTERM).
# Summed with the step's figures, so the stop vote costs no collective of its own.
_SUMMED = (
    "loss",
    "contrastive",
    "diversity",
    "correct",
    "masked",
    "perplexity",
    "micro_batches",
    "audio_seconds",
    "nonfinite",
    "stop",
)


@dataclass(frozen=True)
class Parts:
    model_engine: Any
    stream: PretrainStream
    objective: Objective
    layer_drop: layerdrop.SharedLayerDrop | None
    total_steps: int
    dtype: torch.dtype
    resumed: dict[str, Any]
    """the resumed checkpoint's client state ({} for a fresh run)"""
    precision: str


def build(cfg: Config, pcfg: PretrainConfig, world: World, plan: BatchPlan, ds_config: dict[str, Any]) -> Parts:
    """Collective (engine construction). Raises DataProblem for a split that cannot fill one global batch."""
    t, d = cfg.train, cfg.data
    location, _ = setup.resolve_data(cfg, world)
    catalog = audio_catalog(location, d.min_duration_in_seconds, d.max_duration_in_seconds)
    stream = PretrainStream(catalog, plan, world.rank, t.seed, d.bucket_size_multiplier, pcfg.max_batch_seconds)
    if stream.steps_per_epoch == 0:
        raise not_one_batch(location, len(catalog), catalog.hours(), plan, pcfg.max_batch_seconds, world.world_size)
    set_seed(t.seed)
    model = build_pretraining_model(
        cfg.model, pcfg.pretrain_mask_time_prob, pcfg.num_negatives, pcfg.diversity_loss_weight
    )
    set_seed(t.seed + world.rank)
    layer_drop = layerdrop.install(model, cfg.model.layerdrop, t.seed)
    install_shared_noise(model)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * stream.steps_per_epoch)
    output_dir = Path(t.output_dir)
    resume_from = checkpoint.resolve_resume(t.resume_from_checkpoint, output_dir)
    resume_plan, engine_config = None, ds_config
    if resume_from is not None:
        resume_plan = elastic.prepare_resume(resume_from, ds_config, world.world_size, world.is_main, barrier)
        elastic.check_model(resume_from, model)
        engine_config = resume_plan.configure(ds_config)
    model_engine = engine.initialize(model, engine_config, t.warmup_steps, total)
    resumed = _restore(model_engine, resume_plan, world, stream, t.seed)
    log.info(
        "pretraining: %d utterance(s), %.2f h, %d step(s) of %d; %d parameters",
        len(catalog),
        catalog.hours(),
        total,
        plan.global_batch,
        count_parameters(model),
    )
    mode = precision.mode(ds_config)
    dtype = precision.input_dtype(mode)
    return Parts(model_engine, stream, _objective(t.seed, pcfg), layer_drop, total, dtype, resumed, mode)


def not_one_batch(
    location: str, usable: int, hours: float, plan: BatchPlan, max_seconds: float, world_size: int
) -> DataProblem:
    """The split cannot fill one global batch."""
    if max_seconds <= 0:
        return too_few_to_train(location, usable, {}, "every utterance with audio", plan.global_batch, world_size)
    return DataProblem(
        "--train_data",
        f"--train_data {location}: {usable} usable utterance(s), {hours * 3600:.1f} s of audio, do not fill one global "
        f"batch of {max_seconds:g} s (--max_batch_seconds) cut into {plan.global_batch // plan.micro_batch} "
        "micro-batches; give more audio or a smaller --max_batch_seconds",
    )


def _objective(seed: int, pcfg: PretrainConfig) -> Objective:
    return Objective(
        seed=seed,
        mask_prob=pcfg.pretrain_mask_time_prob,
        mask_length=pcfg.pretrain_mask_time_length,
        min_masks=pcfg.pretrain_mask_time_min_masks,
        num_negatives=pcfg.num_negatives,
        max_gumbel_temperature=pcfg.max_gumbel_temperature,
        min_gumbel_temperature=pcfg.min_gumbel_temperature,
        gumbel_temperature_decay=pcfg.gumbel_temperature_decay,
    )


def client_state(step: int, seed: int, stream: PretrainStream, mlflow_run_id: str | None) -> dict[str, Any]:
    """What a pretraining checkpoint carries besides the engine: the step (the data position and every draw are
    functions of it), and what must match for the run to continue as it was."""
    return {
        "kind": KIND,
        "step": step,
        "seed": seed,
        "global_batch": stream.plan.global_batch,
        "max_batch_seconds": stream.max_seconds,
        "fingerprint": stream.catalog.fingerprint(),
        "mlflow_run_id": mlflow_run_id,
    }


def _restore(
    model_engine: Any, plan: elastic.ResumePlan | None, world: World, stream: PretrainStream, seed: int
) -> dict[str, Any]:
    """Collective. The saved client state ({} without a resume); CheckpointError when it cannot continue here."""
    if plan is None:
        return {}
    saved = checkpoint.load(model_engine, plan)
    checkpoint.restore_rng_state(plan, world.rank)
    expected = client_state(int(saved.get("step", 0)), seed, stream, None)
    differ = [
        k for k in ("kind", "seed", "global_batch", "max_batch_seconds", "fingerprint") if saved.get(k) != expected[k]
    ]
    if differ:
        raise checkpoint.CheckpointError(
            f"--resume_from_checkpoint {plan.checkpoint}: it cannot continue this run: its {', '.join(differ)} "
            "differ(s) from this run's (a fine-tuning checkpoint, another --seed, --global_batch_size, "
            "--max_batch_seconds or corpus)"
        )
    log.info("resumed pretraining from %s at step %d", plan.checkpoint, saved["step"])
    return saved


def train_step(
    parts: Parts,
    step: int,
    micro_batches: list[dict[str, Any]],
    world: World,
    device: torch.device,
    stop_requested: bool = False,
) -> dict[str, float]:
    """One optimizer step (1-based ``step``); returns the step's global sums (_SUMMED). Marks each micro-batch's
    items ``nonfinite`` when its loss was not finite (the loss is a sum over the micro-batch, so all of them)."""
    model_engine, objective = parts.model_engine, parts.objective
    module = model_engine.module
    module.set_gumbel_temperature(objective.gumbel_temperature(step - 1))
    if parts.layer_drop is not None:
        parts.layer_drop.begin_step(step)
    config = module.config
    groups = (config.num_codevector_groups, config.num_codevectors_per_group)
    draws = []
    for batch in micro_batches:
        lengths = batch["attention_mask"].sum(-1).tolist()
        frames = [output_frames(config, n) if ok else 0 for n, ok in zip(lengths, batch["valid"].tolist())]
        width = output_frames(config, batch["input_values"].shape[1])
        draws.append(objective.draw(frames, batch["ids"], step, width, groups))
    local_masked = sum(float(x.mask_time_indices.sum()) for x in draws)
    masked = float(all_reduce_sum([local_masked], device)[0])
    scale = world.world_size * len(micro_batches) / max(masked, 1.0)
    totals = dict.fromkeys(_SUMMED, 0.0)
    for batch, drawn in zip(micro_batches, draws):
        sums: Sums = pretraining_forward(model_engine, batch, drawn, device, parts.dtype)
        model_engine.backward(sums.loss * scale)
        model_engine.step()
        loss = float(sums.loss.detach())
        batch["nonfinite"] = torch.full((len(batch["ids"]),), not math.isfinite(loss), dtype=torch.bool)
        totals["nonfinite"] += float(not math.isfinite(loss))
        totals["loss"] += loss
        totals["contrastive"] += sums.contrastive
        totals["diversity"] += sums.diversity
        totals["correct"] += sums.correct
        totals["masked"] += sums.masked
        totals["perplexity"] += sums.perplexity
        totals["micro_batches"] += 1
        totals["audio_seconds"] += float(batch["audio_seconds"])
    totals["stop"] = float(stop_requested)
    summed = all_reduce_sum([totals[k] for k in _SUMMED], device).tolist()
    return dict(zip(_SUMMED, summed))


def step_metrics(sums: dict[str, float], parts: Parts, step: int, seconds: float) -> dict[str, float]:
    """The logged values: per masked frame over the global batch (the same on any world size)."""
    n = max(sums["masked"], 1.0)
    return {
        "loss": sums["loss"] / n,
        "contrastive_loss": sums["contrastive"] / n,
        "diversity_loss": sums["diversity"] / n,
        "codevector_perplexity": sums["perplexity"] / max(sums["micro_batches"], 1.0),
        "contrastive_accuracy": sums["correct"] / n,
        "masked_frames": sums["masked"],
        "gumbel_temperature": parts.objective.gumbel_temperature(step - 1),
        "learning_rate": engine.current_lr(parts.model_engine),
        "throughput": sums["audio_seconds"] / max(seconds, 1e-9),
        "batch_seconds": sums["audio_seconds"],
        "loss_scale": precision.loss_scale(parts.model_engine),
        "skipped_steps": float(precision.skipped_steps(parts.model_engine)),
    }


def pretrain(
    cfg: Config,
    pcfg: PretrainConfig,
    world: World,
    plan: BatchPlan,
    device: torch.device,
    ds_config: dict[str, Any],
    stop: StopSignal | None = None,
) -> int | None:
    """Collective: the whole run; final/ holds the encoder for fine-tuning. When a stop signal (``stop``, on any
    rank) ended it early: the step every rank had finished, where a checkpoint was saved; else None."""
    output_dir = Path(cfg.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    parts = build(cfg, pcfg, world, plan, ds_config)
    tracker = tracking.build_tracker(world, cfg.tracking, str(output_dir))
    params = {
        **cfg.flat(),
        **{k: v for k, v in vars(pcfg).items()},
        "world_size": world.world_size,
        "total_steps": parts.total_steps,
    }
    tags = {"xlsr_dist.kind": KIND, "xlsr_dist.output_dir": str(output_dir.resolve())}
    tracker.start(params, tags, resume_run_id=parts.resumed.get("mlflow_run_id"))
    status, t = "FAILED", cfg.train
    guard = NonFiniteGuard(parts.precision, max_skips=t.max_nonfinite_steps, announce=world.is_main)
    first = int(parts.resumed.get("step", 0)) + 1
    try:
        parts.model_engine.train()
        # Throughput counts the whole step, reading and decoding its audio included.
        started = time.perf_counter()
        for step, micro_batches in parts.stream.steps(first) if first <= parts.total_steps else ():
            eng = parts.model_engine
            skipped_before, scale_before = eng.skipped_steps, precision.loss_scale(eng)
            sums = train_step(parts, step, micro_batches, world, device, stop is not None and stop.requested)
            skipped = eng.skipped_steps > skipped_before
            guard.check(step, sums["nonfinite"] > 0, skipped, micro_batches, (scale_before, precision.loss_scale(eng)))
            now = time.perf_counter()
            metrics = step_metrics(sums, parts, step, now - started)
            if skipped:  # as training does, a step the loss scaler skipped leaves its (overflowed) losses out
                metrics = {k: v for k, v in metrics.items() if math.isfinite(v)}
            started = now
            stopping = sums["stop"] > 0
            if step % cfg.train.logging_steps == 0 or step == parts.total_steps or stopping:
                tracker.log_metrics(metrics, step)
                if world.is_main:
                    log.info("step %d: %s", step, " ".join(f"{k} {v:.6g}" for k, v in metrics.items()))
            if step % t.save_steps == 0 or step == parts.total_steps or stopping:
                state = client_state(step, t.seed, parts.stream, tracker.run_id)
                checkpoint.save(parts.model_engine, output_dir, step, state, t.save_total_limit, world)
            if stopping:
                status = "KILLED"
                return step
            if step >= parts.total_steps:
                break
        if world.is_main:
            # A rerun into the same --output_dir replaces the earlier final/.
            shutil.rmtree(output_dir / FINAL, ignore_errors=True)
            with atomic.replacing_dir(output_dir / FINAL) as tmp:
                save_for_finetuning(parts.model_engine.module, tmp)
        barrier()
        status = "FINISHED"
        return None
    finally:
        tracker.close(status)
