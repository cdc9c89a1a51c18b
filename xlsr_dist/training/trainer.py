"""The training loop.

Trainer.__init__ is the set-up, read top to bottom as its phases (training/setup.py: resolve the run, build data
and model, build the engine, restore, start tracking, build the loop's helpers); train() is the loop: next batch ->
train_step -> stop/non-finite vote -> maybe_log -> maybe_eval -> maybe_save. Each helper (training/loop.py) knows its
own interval and what it last did; the train state (training/state.py) is what the loop advances and a checkpoint
carries. Every rank runs every collective (the vote, the loss average of a log line, eval, save) at the same step;
only the sinks (console, MLflow) differ by rank.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol

import torch

from xlsr_dist import ctc
from xlsr_dist.config import BatchPlan, Config
from xlsr_dist.forward import CTCLoss, forward
from xlsr_dist.precision import loss_scale
from xlsr_dist.training import engine as engine_setup
from xlsr_dist.training import setup
from xlsr_dist.world import World, all_reduce_max

log = logging.getLogger("xlsr_dist")


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


class Trainer:
    """One run: built and restored in __init__ (collective: every rank constructs it), then train()."""

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
        self.world, self.device, self.stop, self.hooks = world, device, stop, hooks or StepHooks()
        run = setup.resolve_run(cfg, world, plan)
        built = setup.build_data_and_model(cfg, run)
        eng = setup.build_engine(cfg, ds_config, run, built)
        self.compile_counts = engine_setup.CompileCounts() if cfg.train.torch_compile else None
        if self.compile_counts is not None:
            engine_setup.compile_model(eng.model_engine)
        self.hooks.engine_ready(eng.model_engine)
        self.state = setup.restore(cfg, run, built, eng)
        tracking = setup.start_tracking(cfg, ds_config, run, built, eng, self.state)
        self.state.mlflow_run_id = tracking.run_id
        # main() installed it before loading anything; installed again in case a library replaced the handlers since.
        stop.install()
        self.loop = setup.build_loop(cfg, device, run, built, eng, tracking.tracker, self.state)

        self.model_engine, self.tracker = eng.model_engine, tracking.tracker
        self.train_stream, self.layer_drop, self.total_steps = built.train_stream, built.layer_drop, built.total_steps
        self.dtype = eng.dtype
        self.ctc_loss = CTCLoss(built.blank_id, cfg.model.ctc_zero_infinity, cfg.model.ctc_loss_reduction)

    @property
    def step(self) -> int:
        """The last step done (the one a stopped run's checkpoint holds)."""
        return self.state.step

    def train(self) -> bool:
        """Train to total_steps; True when a requested stop ended the run early, its checkpoint saved at self.step."""
        state, loop = self.state, self.loop
        status, stopped = "FINISHED", False
        batches = self.train_stream.steps(state.data)
        self.model_engine.train()
        try:
            while state.step < self.total_steps:
                self.hooks.step_begin(state.step + 1)
                state.data, micro_batches = next(batches)
                self.hooks.batches_ready(state.step + 1, micro_batches)
                skipped_before = self.model_engine.skipped_steps
                scale_before = loss_scale(self.model_engine)
                loss, nonfinite = self.train_step(micro_batches)
                state.step += 1
                skipped = self.model_engine.skipped_steps > skipped_before
                loop.metrics.add(loss, micro_batches, skipped)
                stop_anywhere, nonfinite_anywhere = self.vote(nonfinite)
                scales = (scale_before, loss_scale(self.model_engine))
                loop.guard.check(state.step, nonfinite_anywhere, skipped, micro_batches, scales)
                self.hooks.step_end(state.step, last=state.step == self.total_steps)
                if self.compile_counts is not None:
                    self.compile_counts.first_step_done()

                loop.metrics.maybe_log(state.step)
                loop.evaluator.maybe_eval(state.step)
                loop.checkpointer.maybe_save(state)
                if stop_anywhere:
                    loop.metrics.log_partial(state.step)
                    loop.checkpointer.maybe_save(state, last=True)
                    status, stopped = "KILLED", True
                    break
            if not stopped:
                loop.evaluator.maybe_eval(state.step, last=True)
                loop.checkpointer.maybe_save(state, last=True)
                loop.checkpointer.save_final_model(state.step)
                loop.checkpointer.save_best_model(state.best)
        except BaseException:
            status = "FAILED"
            raise
        finally:
            batches.close()  # stops --dataloader_num_workers 0's prefetch thread before the process may exit
            if loop.progress is not None:
                loop.progress.close()
            self.log_compile_counts()
            self.tracker.close(status)
        return stopped

    def log_compile_counts(self) -> None:
        """--torch_compile: the graphs compiled in this run (per process; rank 0's go to the console and MLflow)."""
        if self.compile_counts is None:
            return
        metrics = self.compile_counts.metrics()
        log.info(
            "torch.compile: %d graph(s) compiled, %d of them after the first step (recompilations) for %d new shape(s)",
            metrics["torch_compile_graphs"],
            metrics["torch_compile_recompilations"],
            metrics["torch_compile_new_shapes"],
        )
        self.tracker.log_metrics(metrics, self.state.step)

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
        for batch in micro_batches:
            with hooks.phase("forward"):
                losses = forward(
                    self.model_engine, batch, device, self.ctc_loss, self.dtype, bucket=self.compile_counts is not None
                ).losses
            assert losses is not None  # a loss was asked for
            valid = batch["valid"].to(device)
            loss = ctc.batch_loss(losses, valid, self.ctc_loss.reduction)
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
