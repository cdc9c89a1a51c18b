"""The training loop and the parts that decide their own timing.

Trainer builds what a run needs (data, model, engine, tracker; a resume restores the engine and the data position),
then train() is the loop, read top to bottom: next batch -> train_step -> stop/non-finite vote -> maybe_log ->
maybe_eval -> maybe_save. Each part knows its own interval (MetricsWindow.should_log, Evaluator.should_eval,
Checkpointer.maybe_save) and what it last did. Every rank runs every collective (the vote, the loss average of a log
line, eval, save) at the same step; only the sinks (console, MLflow) differ by rank.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm
from transformers import set_seed

from xlsr_dist import atomic, ctc, text, tracking
from xlsr_dist.config import BatchPlan, Config, best_model_metric, primary_metric
from xlsr_dist.data import demo, vocabulary
from xlsr_dist.data.stream import DataState, EvalStream, TrainStream
from xlsr_dist.evaluation import counts as evaluate
from xlsr_dist.forward import CTCLoss, forward
from xlsr_dist.model import ModelLoadError, build_model, build_processor, count_parameters, output_frames
from xlsr_dist.precision import skipped_steps, uses_loss_scaling
from xlsr_dist.training import best_checkpoint, checkpoint, elastic, engine, layerdrop
from xlsr_dist.training.specaugment import TimeMasking, forward_takes_time_masks
from xlsr_dist.world import World, all_reduce_max, all_reduce_sum, barrier

log = logging.getLogger("xlsr_dist")


class NonFiniteLoss(RuntimeError):
    pass


class StopFlag(Protocol):
    """A stop request (train.StopRequest): set by a signal on this rank; the loop's per-step vote shares it."""

    signal_name: str

    @property
    def requested(self) -> bool: ...

    def install(self) -> None: ...


class StepHooks:
    """Observers of each training step on this rank, for measurement (bench/train_speed.py); these do nothing.

    Once, engine_ready. Per step, in order: step_begin -> batches_ready -> per micro-batch phase("forward"),
    phase("backward"), phase("optimizer") -> phase("vote") -> step_end. They run inside the step, on every rank: what
    they spend is part of what they measure, and one that raises fails the run as a failing step would.
    """

    def engine_ready(self, model_engine: Any) -> None:
        """The DeepSpeed engine exists (before any checkpoint is loaded into it); read-only use, e.g. its loss scale
        after each step (bench/_gpu_check_rank.py)."""

    def step_begin(self, step: int) -> None:
        """Step ``step`` (counted from 1, as logged) is about to ask for its batches."""

    def batches_ready(self, step: int, micro_batches: Sequence[dict[str, Any]]) -> None:
        """This rank's micro-batches of the step are in hand (step_begin -> here: the wait for data)."""

    def phase(self, name: str) -> AbstractContextManager[None]:
        """Around each part of the step: "forward", "backward", "optimizer" (each micro-batch), "vote" (once)."""
        return contextlib.nullcontext()

    def step_end(self, step: int, last: bool) -> None:
        """The step and its vote are done; logging, eval and saving come next. ``last``: the run's final step."""


def due(step: int, every: int, total_steps: int) -> bool:
    """Every ``every`` steps, and at the run's last step."""
    return step % every == 0 or step == total_steps


@dataclass
class MetricsWindow:
    """What accumulates between two log lines, kept on-device so no step waits on the host, and when to log it."""

    model_engine: Any
    tracker: Any
    world: World
    device: torch.device
    every: int
    total_steps: int
    steps_per_epoch: int
    progress: Any
    loss_sum: torch.Tensor = field(init=False)
    steps: int = field(init=False)
    applied_steps: int = field(init=False)
    """steps whose update was applied: a loss-scaled step skipped for overflow has no loss worth averaging"""
    audio_seconds: float = field(init=False)
    started: float = field(init=False)

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps, self.audio_seconds, self.started = 0, 0.0, time.perf_counter()
        self.applied_steps = 0

    def add(self, loss: torch.Tensor, micro_batches: Sequence[dict[str, Any]], skipped: bool = False) -> None:
        """``skipped``: the step overflowed and was not applied (every rank agrees); its loss (inf or NaN on the
        rank that overflowed) stays out of the window, as HF's Trainer filters it."""
        if not skipped:
            self.loss_sum += loss
            self.applied_steps += 1
        self.steps += 1
        self.audio_seconds += sum(b["audio_seconds"] for b in micro_batches)

    def should_log(self, step: int) -> bool:
        return due(step, self.every, self.total_steps)

    def maybe_log(self, step: int) -> None:
        if self.should_log(step):
            self.log(step)
        if self.progress is not None:
            self.progress.update(1)

    def log_partial(self, step: int) -> None:
        """The steps since the last log line, when the run stops between log steps: their loss is not lost."""
        if self.steps:
            self.log(step)

    def log(self, step: int) -> None:
        """Collective: averages the window's loss over ranks (the global batch's loss) and logs on rank 0."""
        summed = all_reduce_sum([float(self.loss_sum), self.audio_seconds], self.device).tolist()
        elapsed = max(time.perf_counter() - self.started, 1e-9)
        metrics = {
            "loss": summed[0] / (self.applied_steps * self.world.world_size) if self.applied_steps else None,
            "learning_rate": engine.current_lr(self.model_engine),
            "grad_norm": engine.grad_norm(self.model_engine),
            "loss_scale": engine.loss_scale(self.model_engine),
            "skipped_steps": float(skipped_steps(self.model_engine)),
            "epoch": step / max(1, self.steps_per_epoch),
            "throughput": summed[1] / elapsed,
        }
        # A window of skipped steps only has no loss to report: none is logged rather than a NaN.
        metrics = {k: v for k, v in metrics.items() if v is not None}
        self.tracker.log_metrics(metrics, step)
        if self.progress is not None:
            self.progress.set_postfix(
                loss=f"{metrics.get('loss', float('nan')):.4f}",
                lr=f"{metrics['learning_rate']:.2e}",
                audio_s_per_s=f"{metrics['throughput']:.1f}",
                refresh=False,
            )
        self._reset()


@dataclass
class Evaluator:
    """Eval loss, WER and CER on the eval set, every eval_steps and once at the end (collective: all ranks)."""

    model_engine: Any
    stream: EvalStream
    inverse_vocab: list[str]
    blank_id: int
    zero_infinity: bool
    device: torch.device
    dtype: torch.dtype
    tracker: Any
    progress: Any
    every: int
    total_steps: int
    ctc_loss_reduction: str = "mean"
    last_step: int = -1
    primary_metric: str = "eval_wer"
    writes_words: bool = True
    """False for languages written without spaces (zh, ja, th, ...): their WER is shown, marked not meaningful."""
    best: best_checkpoint.BestTracker | None = None
    precision_mode: str = "fp32"
    """amp: the eval forward runs under fp16 autocast, as the training forward does"""

    def should_eval(self, step: int) -> bool:
        return due(step, self.every, self.total_steps)

    def maybe_eval(self, step: int, last: bool = False) -> None:
        """``last``: the run is over; evaluate this step unless that is done already."""
        if step != self.last_step and (last or self.should_eval(step)):
            self.run(step)

    def run(self, step: int) -> None:
        metrics, examples = evaluate.evaluate(
            self.model_engine,
            self.stream,
            self.inverse_vocab,
            self.blank_id,
            self.zero_infinity,
            self.device,
            self.dtype,
            reduction=self.ctc_loss_reduction,
            precision_mode=self.precision_mode,
        )
        self.tracker.log_metrics({k: v for k, v in metrics.items() if k != "eval_samples"}, step)
        msg = f"eval step {step}: {eval_line(metrics, self.primary_metric, self.writes_words)}"
        if self.progress is not None:
            self.progress.write(msg)
        else:
            log.info(msg)
        for uid, ref, hyp in examples:
            log.info("  %s  ref: %s | hyp: %s", uid, ref, hyp)
        self.last_step = step
        if self.best is not None:
            self.best.observe(step, metrics)


def eval_line(metrics: dict[str, float], primary_metric: str, writes_words: bool) -> str:
    """'loss L wer W cer C (N utterances)', a primary metric other than WER moved to the front; in a language
    written without spaces the WER is marked: it counts the text's chance spaces, not words."""
    cells = {
        "eval_loss": f"loss {metrics['eval_loss']:.4f}",
        "eval_wer": f"wer {metrics['eval_wer']:.4f}" + ("" if writes_words else " (n/a: no word spaces)"),
        "eval_cer": f"cer {metrics['eval_cer']:.4f}",
    }
    order = ["eval_loss", "eval_wer", "eval_cer"]
    if primary_metric != "eval_wer":
        order.remove(primary_metric)
        order.insert(0, primary_metric)
    return " ".join(cells[k] for k in order) + f" ({int(metrics['eval_samples'])} utterances)"


@dataclass
class Checkpointer:
    """Checkpoints every save_steps and at the end (rotation in checkpoint.save), then the final model on rank 0."""

    model_engine: Any
    output_dir: Path
    world: World
    tracker: Any
    run_id: str | None  # start()'s answer, or the resumed run's
    every: int
    keep: int
    total_steps: int
    last_step: int = -1
    best: best_checkpoint.BestTracker | None = None
    load_best_model_at_end: bool = False

    def maybe_save(self, step: int, data_state: DataState, last: bool = False) -> None:
        """Collective. ``last``: the run ends at this step (done, or stopped); save it unless that is done already."""
        if step != self.last_step and (last or due(step, self.every, self.total_steps)):
            # Judged before the save, so its client state (and rotation) already know whether it is the best.
            new_best = self.best.saved(step) if self.best is not None else None
            state = self.client_state(step, data_state)
            protect = self.best.step if self.best is not None else None
            path = checkpoint.save(self.model_engine, self.output_dir, step, state, self.keep, self.world, protect)
            self.last_step = step
            if new_best is not None:
                self.record_best(new_best, path)

    def client_state(self, step: int, data_state: DataState) -> dict[str, Any]:
        # tracker.run_id, not start()'s answer: with the server away at start the run is created later.
        return {
            "step": step,
            "data_state": data_state.to_dict(),
            "mlflow_run_id": self.tracker.run_id or self.run_id,
            "world_size": self.world.world_size,
            "best": self.best.state() if self.best is not None else None,
        }

    def record_best(self, best: best_checkpoint.Best, path: Path) -> None:
        """A new best checkpoint, complete at ``path``: best.json on rank 0 and best_step / best_<metric> metrics."""
        if self.world.is_main:
            best_checkpoint.write_record(self.output_dir, best, path)
        self.tracker.log_metrics(best_checkpoint.mlflow_metrics(best), best.step)

    def save_best_model(self) -> None:
        """Rank 0, at the end of training: best/ from the best checkpoint's weights; with load_best_model_at_end,
        final/ too (HF's meaning: the model training ends with is the best)."""
        if not self.world.is_main or self.best is None:
            return
        best = self.best.best
        if best is None:
            log.warning("no best/: no step with both an evaluation and a checkpoint had a finite %s", self.best.metric)
            return
        ckpt = self.output_dir / checkpoint.CHECKPOINTS / checkpoint.tag_for(best.step)
        info = {**best.to_dict(), "checkpoint": str(ckpt.relative_to(self.output_dir))}
        targets = [best_checkpoint.BEST_DIR] + ([checkpoint.FINAL] if self.load_best_model_at_end else [])
        for name in targets:
            checkpoint.save_model_from(ckpt, self.output_dir / name, info)
        log.info("best: step %d (%s %.4f) saved to %s", best.step, best.metric, best.value, ", ".join(targets))

    def save_final_model(self, step: int) -> None:
        if not self.world.is_main:
            return
        final = self.output_dir / checkpoint.FINAL
        if any(p.dtype != torch.float32 for p in self.model_engine.module.parameters()):
            # fp16/bf16 training: the module holds 16-bit copies; the checkpoint of this step (saved just before)
            # holds the fp32 master weights training updated. Users keep an fp32 model whatever the precision.
            ckpt = self.output_dir / checkpoint.CHECKPOINTS / checkpoint.tag_for(step)
            checkpoint.save_model_from(ckpt, final, {"step": step})
            log.info("done: %d steps; fp32 model saved to %s from %s", step, final, ckpt.name)
            return
        self.model_engine.module.save_pretrained(final)
        build_processor(str(self.output_dir / checkpoint.MODEL_CONFIG / "vocab.json")).save_pretrained(final)
        log.info("done: %d steps; model saved to %s", step, final)


class NonFiniteGuard:
    """Ends the run at a non-finite loss on any rank; under fp16, whose loss scaler skips overflowing steps and
    retries with a smaller scale, only after max_nonfinite_steps skipped steps in a row."""

    def __init__(self, precision: str, max_skips: int, announce: bool = True) -> None:
        """``announce``: this rank logs each skipped step (rank 0; every rank skips the same steps)."""
        self.precision, self.max_skips, self.announce = precision, max_skips, announce
        self.consecutive_skips = 0
        self.skipped_ids: list[str] = []

    def check(
        self,
        step: int,
        nonfinite_anywhere: bool,
        skipped: bool,
        micro_batches: Sequence[dict[str, Any]],
        loss_scales: tuple[float, float] | None = None,
    ) -> None:
        """``loss_scales``: the loss scale before and after the step, for the warning a skipped step gets."""
        self.consecutive_skips = self.consecutive_skips + 1 if skipped else 0
        ids = [i for b in micro_batches for i in b["ids"]]
        self.skipped_ids = self.skipped_ids + ids if skipped else []
        if skipped and self.announce:
            before, after = loss_scales or (float("nan"), float("nan"))
            log.warning(
                "step %d skipped: non-finite gradients under the %s loss scale (%d in a row, --max_nonfinite_steps "
                "%d); loss scale %g -> %g",
                step,
                self.precision,
                self.consecutive_skips,
                self.max_skips,
                before,
                after,
            )
        overflowing = self.consecutive_skips >= self.max_skips
        if not overflowing and not (nonfinite_anywhere and not uses_loss_scaling(self.precision)):
            return
        if nonfinite_anywhere:
            bad_ids = [uid for b in micro_batches for uid, bad in zip(b["ids"], b["nonfinite"].tolist()) if bad]
            if bad_ids:
                log.error("non-finite CTC loss at step %d for utterances: %s", step, ", ".join(bad_ids))
            raise NonFiniteLoss(
                f"non-finite loss at step {step} ({self.precision}); offending utterance ids are logged by their "
                f"rank. Resume from the last checkpoint with --resume_from_checkpoint latest after removing them."
            )
        raise NonFiniteLoss(
            f"{self.consecutive_skips} consecutive fp16 overflow steps up to step {step} (--max_nonfinite_steps "
            f"{self.max_skips}); utterance ids of those steps on this rank: {', '.join(self.skipped_ids)}"
        )


class Trainer:
    """One run: everything built and restored in __init__ (collective: every rank constructs it), then train()."""

    def __init__(
        self,
        cfg: Config,
        world: World,
        plan: BatchPlan,
        device: torch.device,
        ds_config: dict[str, Any],
        stop: StopFlag,
        hooks: StepHooks | None = None,
    ) -> None:
        t = cfg.train
        self.world, self.device, self.stop, self.hooks = world, device, stop, hooks or StepHooks()
        self.zero_infinity = cfg.model.ctc_zero_infinity
        self.ctc_loss_reduction = cfg.model.ctc_loss_reduction
        output_dir = Path(t.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        resume_from = checkpoint.resolve_resume(t.resume_from_checkpoint, output_dir)
        train_location, eval_location = resolve_data(cfg, world)
        if resume_from is not None:
            adopt_model_config(resume_from, output_dir, world)

        vocab = load_or_build_vocab(
            train_location, output_dir, resuming=resume_from is not None, normalization=cfg.data.normalization()
        )
        self.blank_id = vocab[text.PAD]
        # Same seed on every rank for the initial weights (DeepSpeed also broadcasts rank 0's), then per-rank streams.
        set_seed(t.seed)
        model = build_model(cfg.model, vocab_size=len(vocab), pad_token_id=self.blank_id)
        set_seed(t.seed + world.rank)
        # The run's only randomness that reaches the weights in the reference recipe (SpecAugment) and layerdrop are
        # drawn from the data and the step, not from the rank's generator: the same on any number of ranks and after
        # any resume.
        self.layer_drop = layerdrop.install(model, cfg.model.layerdrop, t.seed)
        time_masking = TimeMasking.for_model(model.config, t.seed)
        if time_masking is not None and not forward_takes_time_masks(model):
            raise ModelLoadError(
                f"--mask_time_prob {cfg.model.mask_time_prob:g}: this transformers version's Wav2Vec2ForCTC.forward "
                "does not pass mask_time_indices on; upgrade transformers (5.x) or use --mask_time_prob 0"
            )

        frames = functools.partial(output_frames, model.config)
        self.train_stream = TrainStream(train_location, world, plan, t.seed, vocab, cfg.data, frames, time_masking)
        eval_stream = EvalStream(
            eval_location, world, t.per_device_eval_batch_size, vocab, cfg.data, frames, cfg.data.eval_max_utterances
        )
        steps_per_epoch = self.train_stream.steps_per_epoch
        self.total_steps = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * steps_per_epoch)
        log.info("data: %s", self.train_stream.describe())
        for item in self.train_stream.report[:20]:
            log.info("skipped %s: %s", item["id"], item["reason"])

        resume_plan = None
        engine_config = ds_config
        if resume_from is not None:
            # Before the engine exists: a world-size change needs the universal form and DeepSpeed's load_universal.
            resume_plan = elastic.prepare_resume(resume_from, ds_config, world.world_size, world.is_main, barrier)
            elastic.check_model(resume_from, model)
            engine_config = resume_plan.configure(ds_config)
        self.model_engine = engine.initialize(model, engine_config, t.warmup_steps, self.total_steps)
        self.hooks.engine_ready(self.model_engine)
        self.dtype = engine.torch_dtype(ds_config)
        precision = engine.precision(ds_config)

        self.step, self.data_state, run_id = 0, self.train_stream.initial_state(), None
        self.best = best_checkpoint.BestTracker(best_model_metric(cfg))
        if t.save_steps % t.eval_steps:
            log.info(
                "best checkpoint: chosen by %s among the steps with both an evaluation and a save (every %d and the "
                "last), --save_steps %d not being a multiple of --eval_steps %d",
                self.best.metric,
                math.lcm(t.save_steps, t.eval_steps),
                t.save_steps,
                t.eval_steps,
            )
        if resume_plan is not None:
            client = checkpoint.load(self.model_engine, resume_plan)
            if checkpoint.restore_rng_state(resume_plan, world.rank):
                log.info("random streams restored: dropout continues as in the saved run")
            self.best.restore(client.get("best"), checkpoint.complete_steps(output_dir))
            self.step, run_id = int(client["step"]), client.get("mlflow_run_id")
            if resume_from.parent.parent.resolve() != output_dir.resolve():
                run_id = None  # another run's checkpoint: a new output dir is a new MLflow run, not more of the old one
            self.data_state = DataState.from_dict(client["data_state"])
            log.info(
                "resumed from %s at step %d (epoch %d, batch %d of the epoch)",
                resume_from,
                self.step,
                self.data_state.epoch,
                self.data_state.step_in_epoch,
            )
        elif world.is_main:
            save_model_config(model, vocab, output_dir)
        barrier()

        params = {
            **cfg.flat(),
            **tracking.flatten("deepspeed", ds_config, {}),
            "world_size": world.world_size,
            "micro_batch": plan.micro_batch,
            "grad_accum": plan.grad_accum,
            "precision": precision,
            "num_train_utterances": self.train_stream.num_samples,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": self.total_steps,
            "num_parameters": count_parameters(model),
            "primary_metric": primary_metric(cfg),
        }
        if world.is_main:
            tracking.write_train_config(output_dir, params)
        self.tracker = tracking.build_tracker(world, cfg.tracking, str(output_dir))
        run_id = self.tracker.start(
            params,
            {
                "xlsr_dist.kind": "training",
                "xlsr_dist.output_dir": str(output_dir.resolve()),
                "xlsr_dist.primary_metric": primary_metric(cfg),
            },
            resume_run_id=run_id,
        )
        # main() installed it before loading anything; installed again in case a library replaced the handlers since.
        stop.install()

        self.progress = progress_bar(world, t.disable_tqdm, self.step, self.total_steps)
        self.metrics = MetricsWindow(
            self.model_engine,
            self.tracker,
            world,
            device,
            t.logging_steps,
            self.total_steps,
            steps_per_epoch,
            self.progress,
        )
        self.evaluator = Evaluator(
            self.model_engine,
            eval_stream,
            text.inverse(vocab),
            self.blank_id,
            self.zero_infinity,
            device,
            self.dtype,
            self.tracker,
            self.progress,
            t.eval_steps,
            self.total_steps,
            primary_metric=primary_metric(cfg),
            writes_words=text.writes_words(cfg.data.language),
            best=self.best,
            ctc_loss_reduction=self.ctc_loss_reduction,
            precision_mode=precision,
        )
        self.checkpointer = Checkpointer(
            self.model_engine,
            output_dir,
            world,
            self.tracker,
            run_id,
            t.save_steps,
            t.save_total_limit,
            self.total_steps,
            best=self.best,
            load_best_model_at_end=t.load_best_model_at_end,
        )
        self.guard = NonFiniteGuard(precision, t.max_nonfinite_steps, announce=world.is_main)

    def train(self) -> bool:
        """Train to total_steps; True when a requested stop ended the run early, its checkpoint saved at self.step."""
        status, stopped = "FINISHED", False
        batches = self.train_stream.steps(self.data_state)
        self.model_engine.train()
        try:
            while self.step < self.total_steps:
                self.hooks.step_begin(self.step + 1)
                self.data_state, micro_batches = next(batches)
                self.hooks.batches_ready(self.step + 1, micro_batches)
                skipped_before = self.model_engine.skipped_steps
                scale_before = engine.loss_scale(self.model_engine)
                loss, nonfinite = self.train_step(micro_batches)
                self.step += 1
                skipped = self.model_engine.skipped_steps > skipped_before
                self.metrics.add(loss, micro_batches, skipped)
                stop_anywhere, nonfinite_anywhere = self.vote(nonfinite)
                scales = (scale_before, engine.loss_scale(self.model_engine))
                self.guard.check(self.step, nonfinite_anywhere, skipped, micro_batches, scales)
                self.hooks.step_end(self.step, last=self.step == self.total_steps)

                self.metrics.maybe_log(self.step)
                self.evaluator.maybe_eval(self.step)
                self.checkpointer.maybe_save(self.step, self.data_state)
                if stop_anywhere:
                    self.metrics.log_partial(self.step)
                    self.checkpointer.maybe_save(self.step, self.data_state, last=True)
                    status, stopped = "KILLED", True
                    break
            if not stopped:
                self.evaluator.maybe_eval(self.step, last=True)
                self.checkpointer.maybe_save(self.step, self.data_state, last=True)
                self.checkpointer.save_final_model(self.step)
                self.checkpointer.save_best_model()
        except BaseException:
            status = "FAILED"
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
            self.tracker.close(status)
        return stopped

    def train_step(self, micro_batches: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step over grad_accum micro-batches.

        Returns (mean loss, any non-finite valid item) as device tensors: nothing here waits for the accelerator.
        Each batch gets a "nonfinite" mask so ids can be named later, only if the step's vote says something went
        wrong.
        """
        device, hooks = self.device, self.hooks
        step_loss = torch.zeros((), dtype=torch.float64, device=device)
        nonfinite = torch.zeros((), dtype=torch.bool, device=device)
        if self.layer_drop is not None:
            self.layer_drop.begin_step(self.step + 1)
        ctc_loss = CTCLoss(self.blank_id, self.zero_infinity, self.ctc_loss_reduction)
        for batch in micro_batches:
            with hooks.phase("forward"):
                losses = forward(self.model_engine, batch, device, ctc_loss, self.dtype).losses
            assert losses is not None  # a loss was asked for
            valid = batch["valid"].to(device)
            loss = ctc.batch_loss(losses, valid, self.ctc_loss_reduction)
            with hooks.phase("backward"):
                self.model_engine.backward(loss)
            with hooks.phase("optimizer"):
                self.model_engine.step()
            step_loss += loss.detach().double()
            batch["nonfinite"] = ~torch.isfinite(losses.detach()) & valid
            nonfinite |= batch["nonfinite"].any()
        return step_loss / len(micro_batches), nonfinite

    def vote(self, nonfinite: torch.Tensor) -> tuple[bool, bool]:
        """(a stop was requested on some rank, some rank saw a non-finite loss). One tiny collective per step, so
        that all ranks stop, save or raise at the same step and no collective is left waiting."""
        with self.hooks.phase("vote"):
            flags = torch.stack([torch.tensor(float(self.stop.requested), device=self.device), nonfinite.float()])
            stop_anywhere, nonfinite_anywhere = all_reduce_max(flags, self.device).tolist()
        return bool(stop_anywhere), bool(nonfinite_anywhere)


def resolve_data(cfg: Config, world: World) -> tuple[str, str]:
    """Shard locations for train and eval; the demo corpus is generated once per node, then shared."""
    if cfg.data.train_data != "demo":
        return cfg.data.train_data, cfg.data.eval_data
    root = Path(cfg.data.data_cache_dir) if cfg.data.data_cache_dir else demo.default_cache_dir()
    if world.is_local_main:
        demo.ensure_demo_corpus(root, n_train=cfg.data.demo_train_utterances, n_eval=cfg.data.demo_eval_utterances)
    barrier()
    train_dir, eval_dir = demo.ensure_demo_corpus(
        root, n_train=cfg.data.demo_train_utterances, n_eval=cfg.data.demo_eval_utterances
    )
    return str(train_dir), (cfg.data.eval_data or str(eval_dir))


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


def save_model_config(model: Any, vocab: dict[str, int], output_dir: Path) -> None:
    target = output_dir / checkpoint.MODEL_CONFIG
    target.mkdir(parents=True, exist_ok=True)
    text.save_vocab(vocab, target / "vocab.json")
    build_processor(str(target / "vocab.json")).save_pretrained(target)
    model.config.save_pretrained(target)


def progress_bar(world: World, disabled: bool, start: int, total: int) -> Any:
    if not world.is_main or disabled:
        return None
    return tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True, file=sys.stderr)
