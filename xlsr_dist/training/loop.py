"""The loop's helpers, each knowing its own interval and what it last did: MetricsWindow (the log line),
Evaluator (eval loss/WER/CER), Checkpointer (checkpoints, final/ and best/ models) and NonFiniteGuard (when a
non-finite loss ends the run). Every rank builds the same ones and runs their collectives at the same step; only the
sinks (console, MLflow) differ by rank.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from xlsr_dist.data.stream import EvalStream
from xlsr_dist.evaluation import counts as evaluate
from xlsr_dist.model import build_processor
from xlsr_dist.precision import loss_scale, skipped_steps, uses_loss_scaling
from xlsr_dist.tracking import Tracker
from xlsr_dist.training import best_checkpoint, checkpoint
from xlsr_dist.training.engine import current_lr, grad_norm
from xlsr_dist.training.state import TrainState
from xlsr_dist.world import World, all_reduce_sum

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine
    from tqdm import tqdm

log = logging.getLogger("xlsr_dist")


class NonFiniteLoss(RuntimeError):
    pass


def due(step: int, every: int, total_steps: int) -> bool:
    """Every ``every`` steps, and at the run's last step."""
    return step % every == 0 or step == total_steps


@dataclass(kw_only=True)
class MetricsWindow:
    """What accumulates between two log lines, kept on-device so no step waits on the host, and when to log it."""

    model_engine: DeepSpeedEngine
    tracker: Tracker
    world: World
    device: torch.device
    every: int
    total_steps: int
    steps_per_epoch: int
    progress: tqdm | None
    loss_sum: torch.Tensor = field(init=False)
    steps: int = field(init=False)
    applied_steps: int = field(init=False)
    """steps whose update was applied: a loss-scaled step skipped for overflow has no loss worth averaging"""
    audio_seconds: float = field(init=False)
    started: float = field(init=False)
    set_seen: dict[str, list[float]] = field(init=False)
    """mixed training sets: utterances and audio seconds of each in this window (data/stream.py's 'set_seen')"""

    def __post_init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.steps, self.audio_seconds, self.started = 0, 0.0, time.perf_counter()
        self.applied_steps = 0
        self.set_seen = {}

    def add(self, loss: torch.Tensor, micro_batches: Sequence[dict[str, Any]], skipped: bool = False) -> None:
        """``skipped``: the step overflowed and was not applied (every rank agrees); its loss (inf or NaN on the
        rank that overflowed) stays out of the window, as HF's Trainer filters it."""
        if not skipped:
            self.loss_sum += loss
            self.applied_steps += 1
        self.steps += 1
        self.audio_seconds += sum(b["audio_seconds"] for b in micro_batches)
        for name, (utterances, seconds) in micro_batches[0].get("set_seen", {}).items():
            seen = self.set_seen.setdefault(name, [0.0, 0.0])
            seen[0], seen[1] = seen[0] + utterances, seen[1] + seconds

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
            "learning_rate": current_lr(self.model_engine),
            "grad_norm": grad_norm(self.model_engine),
            "loss_scale": loss_scale(self.model_engine),
            "skipped_steps": float(skipped_steps(self.model_engine)),
            "epoch": step / max(1, self.steps_per_epoch),
            "throughput": summed[1] / elapsed,
        }
        for name, (utterances, seconds) in self.set_seen.items():
            metrics[f"data/{name}/utterances"] = utterances
            metrics[f"data/{name}/hours"] = seconds / 3600.0
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


@dataclass(kw_only=True)
class Evaluator:
    """Eval loss, WER and CER on the eval set(s), every eval_steps and once at the end (collective: all ranks).
    Several sets: each one's as eval/<set>/loss|wer|cer, and eval_* are their unweighted means (each set, e.g. each
    language, counts alike whatever its size)."""

    model_engine: DeepSpeedEngine
    streams: dict[str, EvalStream]
    inverse_vocab: list[str]
    blank_id: int
    zero_infinity: bool
    ctc_loss_reduction: str
    device: torch.device
    dtype: torch.dtype
    precision_mode: str
    """amp: the eval forward runs under fp16 autocast, as the training forward does"""
    tracker: Tracker
    progress: tqdm | None
    every: int
    total_steps: int
    primary_metric: str
    writes_words: bool
    """False for languages written without spaces (zh, ja, th, ...): their WER is shown, marked not meaningful."""
    best: best_checkpoint.BestTracker
    last_step: int = -1

    def should_eval(self, step: int) -> bool:
        return due(step, self.every, self.total_steps)

    def maybe_eval(self, step: int, last: bool = False) -> None:
        """``last``: the run is over; evaluate this step unless that is done already."""
        if step != self.last_step and (last or self.should_eval(step)):
            self.run(step)

    def run(self, step: int) -> None:
        by_set: dict[str, dict[str, float]] = {}
        logged: dict[str, float] = {}
        for name, stream in self.streams.items():
            metrics, examples = evaluate.evaluate(
                self.model_engine,
                stream,
                self.inverse_vocab,
                self.blank_id,
                self.zero_infinity,
                self.device,
                self.dtype,
                reduction=self.ctc_loss_reduction,
                precision_mode=self.precision_mode,
            )
            by_set[name] = metrics
            if len(self.streams) > 1:
                logged |= {f"eval/{name}/{k[len('eval_') :]}": metrics[k] for k in _SET_METRICS}
                self._say(f"eval step {step} {name}: {eval_line(metrics, self.primary_metric, self.writes_words)}")
            for uid, ref, hyp in examples:
                log.info("  %s  ref: %s | hyp: %s", uid, ref, hyp)
        metrics = mean_metrics(list(by_set.values()))
        self.tracker.log_metrics(logged | {k: v for k, v in metrics.items() if k != "eval_samples"}, step)
        mean = " (mean of the sets)" if len(by_set) > 1 else ""
        self._say(f"eval step {step}{mean}: {eval_line(metrics, self.primary_metric, self.writes_words)}")
        self.last_step = step
        self.best.observe(step, metrics)

    def _say(self, msg: str) -> None:
        if self.progress is not None:
            self.progress.write(msg)
        else:
            log.info(msg)


_SET_METRICS = ("eval_loss", "eval_wer", "eval_cer")


def mean_metrics(per_set: Sequence[dict[str, float]]) -> dict[str, float]:
    """One set's metrics as they are; several sets' eval_loss/wer/cer as unweighted means, eval_samples summed."""
    if len(per_set) == 1:
        return per_set[0]
    out = {k: sum(m[k] for m in per_set) / len(per_set) for k in _SET_METRICS}
    return out | {"eval_samples": sum(m["eval_samples"] for m in per_set)}


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


@dataclass(kw_only=True)
class Checkpointer:
    """Checkpoints every save_steps and at the end (rotation in checkpoint.save), then the final model on rank 0."""

    model_engine: DeepSpeedEngine
    output_dir: Path
    world: World
    tracker: Tracker
    every: int
    keep: int
    total_steps: int
    load_best_model_at_end: bool
    last_step: int = -1

    def maybe_save(self, state: TrainState, last: bool = False) -> None:
        """Collective. ``last``: the run ends at this step (done, or stopped); save it unless that is done already."""
        step = state.step
        if step != self.last_step and (last or due(step, self.every, self.total_steps)):
            # Judged before the save, so its client state (and rotation) already know whether it is the best.
            new_best = state.best.saved(step)
            # The tracker's run id, once it has one: with the server away at start the run is created later.
            state.mlflow_run_id = self.tracker.run_id or state.mlflow_run_id
            path = checkpoint.save(
                self.model_engine, self.output_dir, step, state.state_dict(), self.keep, self.world, state.best.step
            )
            self.last_step = step
            if new_best is not None:
                self.record_best(new_best, path)

    def record_best(self, best: best_checkpoint.Best, path: Path) -> None:
        """A new best checkpoint, complete at ``path``: best.json on rank 0 and best_step / best_<metric> metrics."""
        if self.world.is_main:
            best_checkpoint.write_record(self.output_dir, best, path)
        self.tracker.log_metrics(best_checkpoint.mlflow_metrics(best), best.step)

    def save_best_model(self, best_tracker: best_checkpoint.BestTracker) -> None:
        """Rank 0, at the end of training: best/ from the best checkpoint's weights; with load_best_model_at_end,
        final/ too (HF's meaning: the model training ends with is the best)."""
        if not self.world.is_main:
            return
        best = best_tracker.best
        if best is None:
            log.warning(
                "no best/: no step with both an evaluation and a checkpoint had a finite %s", best_tracker.metric
            )
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
