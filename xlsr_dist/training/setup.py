"""The Trainer's set-up, in the order it runs: each phase a function of what the ones before returned.

resolve_run -> RunPlan (output dir, the checkpoint to resume, shard locations, the batch plan)
build_data_and_model -> DataAndModel (vocabulary, model, train and eval streams, total steps)
build_engine -> EngineParts (the DeepSpeed engine, the resume plan it was configured for, precision)
restore -> TrainState (checkpoint, random streams, data position, best so far; a fresh state without a resume)
start_tracking -> Tracking (the tracker and the MLflow run it logs to)
build_loop -> LoopParts (progress bar, metric window, evaluator, checkpointer, non-finite guard)

Every phase is collective: every rank runs it, in this order, so the barriers inside meet.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm
from transformers import Wav2Vec2ForCTC, set_seed

from xlsr_dist import atomic, precision, text, tracking
from xlsr_dist.config import BatchPlan, Config, best_model_metric, primary_metric
from xlsr_dist.data import demo, vocabulary
from xlsr_dist.data.specaugment import TimeMasking, forward_takes_time_masks
from xlsr_dist.data.stream import EvalStream, TrainStream
from xlsr_dist.model import ModelLoadError, build_model, build_processor, count_parameters, output_frames
from xlsr_dist.training import best_checkpoint, checkpoint, elastic, engine, layerdrop
from xlsr_dist.training.loop import Checkpointer, Evaluator, MetricsWindow, NonFiniteGuard
from xlsr_dist.training.state import TrainState
from xlsr_dist.world import World, barrier

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

log = logging.getLogger("xlsr_dist")


@dataclass(frozen=True, kw_only=True)
class RunPlan:
    """Where the run writes, what it resumes from and which data it reads, on this world."""

    output_dir: Path
    resume_from: Path | None
    """the complete checkpoint to continue from (--resume_from_checkpoint resolved), or None"""
    train_location: str
    eval_sets: list[tuple[str, str]]
    """(name, location) of each eval set; one set is logged as eval_*, several also as eval/<name>/*"""
    world: World
    batch: BatchPlan


@dataclass(frozen=True, kw_only=True)
class DataAndModel:
    vocab: dict[str, int]
    blank_id: int
    model: Wav2Vec2ForCTC
    layer_drop: layerdrop.SharedLayerDrop | None
    train_stream: TrainStream
    eval_streams: dict[str, EvalStream]
    total_steps: int


@dataclass(frozen=True, kw_only=True)
class EngineParts:
    model_engine: DeepSpeedEngine
    resume_plan: elastic.ResumePlan | None
    """how the checkpoint loads into this engine (universal on another world size); None without a resume"""
    precision: str
    """amp, fp16, bf16 or fp32 (precision.mode)"""
    dtype: torch.dtype
    """the dtype audio enters the model in"""


@dataclass(frozen=True, kw_only=True)
class Tracking:
    tracker: tracking.Tracker
    run_id: str | None
    """the MLflow run logged to: the resumed one, a new one, or None until the server answers (or with no MLflow)"""


@dataclass(frozen=True, kw_only=True)
class LoopParts:
    progress: tqdm | None
    metrics: MetricsWindow
    evaluator: Evaluator
    checkpointer: Checkpointer
    guard: NonFiniteGuard


def resolve_run(cfg: Config, world: World, batch: BatchPlan) -> RunPlan:
    """Collective. The output dir exists afterwards; resuming another run's checkpoint brings its model config."""
    output_dir = Path(cfg.train.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resume_from = checkpoint.resolve_resume(cfg.train.resume_from_checkpoint, output_dir)
    train_location, eval_sets = resolve_data(cfg, world)
    if resume_from is not None:
        adopt_model_config(resume_from, output_dir, world)
    return RunPlan(
        output_dir=output_dir,
        resume_from=resume_from,
        train_location=train_location,
        eval_sets=eval_sets,
        world=world,
        batch=batch,
    )


def build_data_and_model(cfg: Config, run: RunPlan) -> DataAndModel:
    """The vocabulary, the model on it (the same initial weights on every rank) and the data streams."""
    t, world = cfg.train, run.world
    vocab = load_or_build_vocab(
        run.train_location, run.output_dir, resuming=run.resume_from is not None, normalization=cfg.data.normalization()
    )
    blank_id = vocab[text.PAD]
    # Same seed on every rank for the initial weights (DeepSpeed also broadcasts rank 0's), then per-rank streams.
    set_seed(t.seed)
    model = build_model(cfg.model, vocab_size=len(vocab), pad_token_id=blank_id)
    set_seed(t.seed + world.rank)
    # The run's only randomness that reaches the weights in the reference recipe (SpecAugment) and layerdrop are
    # drawn from the data and the step, not from the rank's generator: the same on any number of ranks and after
    # any resume.
    layer_drop = layerdrop.install(model, cfg.model.layerdrop, t.seed)
    time_masking = TimeMasking.for_model(model.config, t.seed)
    if time_masking is not None and not forward_takes_time_masks(model):
        raise ModelLoadError(
            f"--mask_time_prob {cfg.model.mask_time_prob:g}: this transformers version's Wav2Vec2ForCTC.forward "
            "does not pass mask_time_indices on; upgrade transformers (5.x) or use --mask_time_prob 0"
        )
    frames = functools.partial(output_frames, model.config)
    train_stream = TrainStream(run.train_location, world, run.batch, t.seed, vocab, cfg.data, frames, time_masking)
    eval_streams = {
        name: EvalStream(
            location, world, t.per_device_eval_batch_size, vocab, cfg.data, frames, cfg.data.eval_max_utterances
        )
        for name, location in run.eval_sets
    }
    steps_per_epoch = train_stream.steps_per_epoch
    total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
    log.info("data: %s", train_stream.describe())
    for item in train_stream.report[:20]:
        log.info("skipped %s: %s", item["id"], item["reason"])
    return DataAndModel(
        vocab=vocab,
        blank_id=blank_id,
        model=model,
        layer_drop=layer_drop,
        train_stream=train_stream,
        eval_streams=eval_streams,
        total_steps=total_steps,
    )


def build_engine(cfg: Config, ds_config: dict[str, Any], run: RunPlan, built: DataAndModel) -> EngineParts:
    """Collective. A resume is planned before the engine exists: a world-size change needs the universal form and
    DeepSpeed's load_universal in the engine's config."""
    resume_plan, engine_config = None, ds_config
    if run.resume_from is not None:
        world = run.world
        resume_plan = elastic.prepare_resume(run.resume_from, ds_config, world.world_size, world.is_main, barrier)
        elastic.check_model(run.resume_from, built.model)
        engine_config = resume_plan.configure(ds_config)
    model_engine = engine.initialize(built.model, engine_config, cfg.train.warmup_steps, built.total_steps)
    mode = precision.mode(ds_config)
    return EngineParts(
        model_engine=model_engine, resume_plan=resume_plan, precision=mode, dtype=precision.input_dtype(mode)
    )


def restore(cfg: Config, run: RunPlan, built: DataAndModel, eng: EngineParts) -> TrainState:
    """Collective. The train state to start from: the checkpoint's (engine, random streams, client state) when
    resuming, else a fresh one, this run's model config written for export and transcribe."""
    t, world = cfg.train, run.world
    state = TrainState(
        step=0,
        data=built.train_stream.initial_state(),
        best=best_checkpoint.BestTracker(best_model_metric(cfg)),
        mlflow_run_id=None,
        world_size=world.world_size,
    )
    if t.save_steps % t.eval_steps:
        log.info(
            "best checkpoint: chosen by %s among the steps with both an evaluation and a save (every %d and the "
            "last), --save_steps %d not being a multiple of --eval_steps %d",
            state.best.metric,
            math.lcm(t.save_steps, t.eval_steps),
            t.save_steps,
            t.eval_steps,
        )
    if eng.resume_plan is not None and run.resume_from is not None:
        saved = checkpoint.load(eng.model_engine, eng.resume_plan)
        if checkpoint.restore_rng_state(eng.resume_plan, world.rank):
            log.info("random streams restored: dropout continues as in the saved run")
        same_run = run.resume_from.parent.parent.resolve() == run.output_dir.resolve()
        state.load_state_dict(saved, complete_steps=checkpoint.complete_steps(run.output_dir), same_run=same_run)
        log.info(
            "resumed from %s at step %d (epoch %d, batch %d of the epoch)",
            run.resume_from,
            state.step,
            state.data.epoch,
            state.data.step_in_epoch,
        )
    elif world.is_main:
        save_model_config(built.model, built.vocab, run.output_dir)
    barrier()
    return state


def start_tracking(
    cfg: Config, ds_config: dict[str, Any], run: RunPlan, built: DataAndModel, eng: EngineParts, state: TrainState
) -> Tracking:
    """The run's parameters (train_config.json on rank 0, MLflow params) and its MLflow run: the one the train
    state names when resuming."""
    world, batch = run.world, run.batch
    params = {
        **cfg.flat(),
        **tracking.flatten("deepspeed", ds_config, {}),
        "world_size": world.world_size,
        "micro_batch": batch.micro_batch,
        "grad_accum": batch.grad_accum,
        "precision": eng.precision,
        "num_train_utterances": built.train_stream.num_samples,
        "steps_per_epoch": built.train_stream.steps_per_epoch,
        "total_steps": built.total_steps,
        "num_parameters": count_parameters(built.model),
        "primary_metric": primary_metric(cfg),
    }
    if world.is_main:
        tracking.write_train_config(run.output_dir, params)
    tracker = tracking.build_tracker(world, cfg.tracking, str(run.output_dir))
    tags = {
        "xlsr_dist.kind": "training",
        "xlsr_dist.output_dir": str(run.output_dir.resolve()),
        "xlsr_dist.primary_metric": primary_metric(cfg),
    }
    run_id = tracker.start(params, tags, resume_run_id=state.mlflow_run_id)
    return Tracking(tracker=tracker, run_id=run_id)


def build_loop(
    cfg: Config,
    device: torch.device,
    run: RunPlan,
    built: DataAndModel,
    eng: EngineParts,
    tracker: tracking.Tracker,
    state: TrainState,
) -> LoopParts:
    """The loop's helpers, all on the same total steps; the progress bar starts at the state's step, the evaluator
    feeds the state's best tracker."""
    t, world, total = cfg.train, run.world, built.total_steps
    progress = progress_bar(world, t.disable_tqdm, state.step, total)
    return LoopParts(
        progress=progress,
        metrics=MetricsWindow(
            model_engine=eng.model_engine,
            tracker=tracker,
            world=world,
            device=device,
            every=t.logging_steps,
            total_steps=total,
            steps_per_epoch=built.train_stream.steps_per_epoch,
            progress=progress,
        ),
        evaluator=Evaluator(
            model_engine=eng.model_engine,
            streams=built.eval_streams,
            inverse_vocab=text.inverse(built.vocab),
            blank_id=built.blank_id,
            zero_infinity=cfg.model.ctc_zero_infinity,
            ctc_loss_reduction=cfg.model.ctc_loss_reduction,
            device=device,
            dtype=eng.dtype,
            precision_mode=eng.precision,
            tracker=tracker,
            progress=progress,
            every=t.eval_steps,
            total_steps=total,
            primary_metric=primary_metric(cfg),
            writes_words=text.writes_words(cfg.data.language),
            best=state.best,
        ),
        checkpointer=Checkpointer(
            model_engine=eng.model_engine,
            output_dir=run.output_dir,
            world=world,
            tracker=tracker,
            every=t.save_steps,
            keep=t.save_total_limit,
            total_steps=total,
            load_best_model_at_end=t.load_best_model_at_end,
        ),
        guard=NonFiniteGuard(eng.precision, max_skips=t.max_nonfinite_steps, announce=world.is_main),
    )


def resolve_data(cfg: Config, world: World) -> tuple[str, list[tuple[str, str]]]:
    """Shard locations for train and the (name, location) eval sets; the demo corpus is generated once per node,
    then shared."""
    if cfg.data.train_data != "demo":
        return cfg.data.train_data, cfg.data.eval_sets()
    root = Path(cfg.data.data_cache_dir) if cfg.data.data_cache_dir else demo.default_cache_dir()
    if world.is_local_main:
        demo.ensure_demo_corpus(root, n_train=cfg.data.demo_train_utterances, n_eval=cfg.data.demo_eval_utterances)
    barrier()
    train_dir, eval_dir = demo.ensure_demo_corpus(
        root, n_train=cfg.data.demo_train_utterances, n_eval=cfg.data.demo_eval_utterances
    )
    return str(train_dir), (cfg.data.eval_sets() or [("eval", str(eval_dir))])


def load_or_build_vocab(
    train_location: str, output_dir: Path, resuming: bool, normalization: text.TextNormalization
) -> dict[str, int]:
    """The training transcripts' characters, in any script (normalised as the split was prepared: the manifest's
    character set); a resumed run reuses the saved vocabulary so the head keeps its meaning."""
    saved = output_dir / checkpoint.MODEL_CONFIG / "vocab.json"
    if resuming and saved.is_file():
        return text.load_vocab(saved)
    return vocabulary.split_vocabulary(train_location, normalization)


def adopt_model_config(ckpt: Path, output_dir: Path, world: World) -> None:
    """Collective. Resuming another run's checkpoint into a new --output_dir: that run's vocabulary and model config
    come along, so the head keeps its meaning and export/transcribe find them here."""
    source = ckpt.parent.parent / checkpoint.MODEL_CONFIG
    target = output_dir / checkpoint.MODEL_CONFIG
    if world.is_main and source.is_dir() and not target.is_dir():
        with atomic.replacing_dir(target) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
    barrier()


def save_model_config(model: Wav2Vec2ForCTC, vocab: dict[str, int], output_dir: Path) -> None:
    target = output_dir / checkpoint.MODEL_CONFIG
    target.mkdir(parents=True, exist_ok=True)
    text.save_vocab(vocab, target / "vocab.json")
    build_processor(str(target / "vocab.json")).save_pretrained(target)
    model.config.save_pretrained(target)


def progress_bar(world: World, disabled: bool, start: int, total: int) -> tqdm | None:
    if not world.is_main or disabled:
        return None
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
