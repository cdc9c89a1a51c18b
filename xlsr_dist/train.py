"""Entry point: `deepspeed --num_gpus N -m xlsr_dist.train`, `torchrun --nproc_per_node N -m xlsr_dist.train`,
`srun python -m xlsr_dist.train` or plain `python -m xlsr_dist.train` (one rank).

main() parses and checks everything before any process group starts, then runs xlsr_dist.trainer.Trainer, whose loop
reads top to bottom: train_step -> maybe_log -> maybe_eval -> maybe_save. This module owns what a process needs
around it: the stop signals, the console, the exit status (75 after a saved stop, 2 for user errors: the
configuration, and data problems found once the shards are read) and a fast, simultaneous exit.

Stopping: SIGTERM (Kubernetes, torchrun's agent, most schedulers) or SIGUSR1 (SLURM's --signal) on any rank stops
every rank at the same step with a complete checkpoint; each rank exits 75 (EX_TEMPFAIL) and
`--resume_from_checkpoint latest` continues in the same MLflow run. Exit statuses of a rank: 0 done, 75 stopped and
saved, 2 a user error, anything else a failure. A launcher reports its own (tests/test_sigterm.py): torchrun forwards
SIGTERM to the ranks and exits 1; the `deepspeed` command forwards nothing on one node (it dies of the signal, 143,
and the ranks train on), so signal its process group (`kill -TERM -- -PGID`, scancel, dumb-init, `tini -g`). Both
launchers SIGKILL the ranks 30 s after passing SIGTERM on (their source; torchrun: --shutdown_timeout), so the step
and the save must fit in that; a rank's "stop requested (SIGTERM): checkpoint saved at step N" line and
step-N/COMPLETE.json, not the launcher's status, say the stop was clean.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

# `python -m xlsr_dist.train`: catch SIGUSR1/SIGTERM before the imports below (seconds), whose default action would
# kill a rank signalled while it loads; StopRequest picks up what arrived meanwhile. (Hence the imports below the
# handler: E402 is deliberate here and only here.)
_EARLY_STOP: list[str] = []
if __name__ == "__main__":
    for _sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(_sig, lambda signum, _frame: _EARLY_STOP.append(signal.Signals(signum).name))

from xlsr_dist import precision  # noqa: E402
from xlsr_dist.config import Config, ConfigError, parse_args, plan_batches  # noqa: E402
from xlsr_dist.console import setup_console  # noqa: E402
from xlsr_dist.data import language  # noqa: E402
from xlsr_dist.data.problems import DataProblem  # noqa: E402
from xlsr_dist.training import checkpoint, elastic, engine, preflight  # noqa: E402
from xlsr_dist.world import (  # noqa: E402
    World,
    barrier,
    describe_peer_failure,
    device_for,
    init,
    is_peer_failure,
    report_problem,
    shutdown,
)

if TYPE_CHECKING:
    from xlsr_dist.training.trainer import StepHooks

log = logging.getLogger("xlsr_dist")

# Exit status after a requested stop (SIGUSR1/SIGTERM) that saved a checkpoint: EX_TEMPFAIL, "try again".
# slurm/train.sbatch requeues the job on it; any other non-zero status is a real failure.
EXIT_PREEMPTED = 75


class StopRequest:
    """Set by SIGUSR1/SIGTERM on any rank; ranks agree on it through the per-step vote."""

    def __init__(self) -> None:
        self.signal_name = _EARLY_STOP[-1] if _EARLY_STOP else ""

    def install(self) -> None:
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(sig, self._handler)

    def _handler(self, signum: int, _frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return bool(self.signal_name)


def retain_freed_memory(cfg: Config) -> None:
    """--retain_freed_memory: the step's freed host memory kept for the next step (memory.py), said once."""
    if not cfg.train.retain_freed_memory:
        return
    from xlsr_dist import memory

    if memory.retain_freed_memory():
        log.info("host memory: freed blocks kept for reuse (--retain_freed_memory; glibc mallopt)")


def main(argv: Sequence[str] | None = None, hooks: StepHooks | None = None) -> None:
    """``hooks``: observers of each step (bench/train_speed.py times the step's parts through them)."""
    # First thing: USR1/TERM's default action kills the process, and a scheduler may send them while we are still
    # loading; caught here, they stop training after its first step with a checkpoint instead.
    stop = StopRequest()
    stop.install()
    world = World.from_env()
    try:
        cfg = parse_args_and_locations(argv)
        # A corpus prepared for one language (or normalisation) and trained as another: said once, before any rank
        # waits for another.
        mismatches = language.training_problems(cfg)
        if mismatches:
            raise ConfigError(mismatches)
        plan = plan_batches(cfg.train.global_batch_size, world.world_size, cfg.train.per_device_train_batch_size)
        device = device_for(world)
        ds_config = engine.resolve_ds_config(cfg, plan, device)
        preflight.check(cfg)
    except ConfigError as exc:
        # Before any process group exists: every rank exits, the ranks that can see the problem say it once.
        report_problem(world, "xlsr_dist", str(exc), exc.scope)
        sys.exit(2)
    setup_console(world)
    log.info(
        "world %d rank(s): global batch %d = %d micro x %d accumulation x %d rank(s); %s on %s",
        world.world_size,
        plan.global_batch,
        plan.micro_batch,
        plan.grad_accum,
        world.world_size,
        precision.mode(ds_config),
        device,
    )
    retain_freed_memory(cfg)
    # The trainer pulls in transformers, the data pipeline and jiwer (seconds): loaded only once the configuration
    # is known to be good, and with the stop handlers above already in place.
    from xlsr_dist.model import ModelLoadError
    from xlsr_dist.training.trainer import Trainer

    init(world, device, cfg.train.dist_timeout_s)
    try:
        trainer = Trainer(cfg, world, plan, device, ds_config, stop, hooks)
        stopped = trainer.train()
        if stopped:
            log.warning(
                "stop requested (%s): checkpoint saved at step %d; exiting with status %d so the "
                "scheduler can requeue; resume with --resume_from_checkpoint latest",
                stop.signal_name or "signal on another rank",
                trainer.step,
                EXIT_PREEMPTED,
            )
        code = EXIT_PREEMPTED if stopped else 0
        # Leave together (rank 0 may still have been flushing MLflow): under `srun --kill-on-bad-exit` the first
        # rank to exit non-zero (75) gets the others killed, which would turn their 75 into 143 and lose the requeue.
        barrier()
    except (checkpoint.CheckpointError, elastic.ElasticResumeError, ModelLoadError) as exc:
        # What preflight could not know (a download that failed, a checkpoint DeepSpeed refused): the same message.
        report_problem(world, "xlsr_dist", str(exc), "node")
        code = 2
    except DataProblem as exc:
        # Found once the shards are read; every rank reads the same catalog and raised here after the same
        # collectives, so none waits in one: rank 0 says it, all exit 2.
        report_problem(world, "xlsr_dist", str(exc), "run")
        code = 2
    except Exception as exc:
        if is_peer_failure(exc):
            log.error(
                "rank %d: a collective failed, a peer rank probably died or was killed (%s); exiting. The "
                "launcher's message or the first failing rank's log names the cause.",
                world.rank,
                describe_peer_failure(exc),
            )
        raise
    finally:
        shutdown()
    sys.exit(code)


def parse_args_and_locations(argv: Sequence[str] | None) -> Config:
    """parse_args; when the configuration has problems, a data location that is missing or holds no shards is named
    in the same message (both are known before any process group). The locations are what this node sees: such a
    message has ConfigError scope "node"."""
    try:
        return parse_args(argv)
    except ConfigError as exc:
        if not isinstance(exc.config, Config):
            raise
        data = exc.config.data
        # Each problem starts with the flag(s) it is about: "--eval_data: required when --train_data is not 'demo'".
        named = {flag for problem in exc.problems for flag in problem.split(":")[0].split("/")}
        locations = [("--train_data", data.train_data)] if data.train_data not in ("", "demo") else []
        try:
            locations += [("--eval_data", location) for _, location in data.eval_sets()]
        except ValueError:
            pass  # reported among the problems already
        found: list[str] = []
        for flag, location in locations:
            if flag in named:
                continue  # the flag's value is wrong already: its location would only repeat that
            try:
                preflight.shard_paths(flag, location)
            except ConfigError as missing:
                found += missing.problems
        if not found:
            raise
        raise ConfigError([*exc.problems, *found], scope="node") from None


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown, once main() has returned on every rank (the final barrier): every
    result is on disk and the tracker is closed, and tearing down torch/DeepSpeed/MLflow takes seconds (7 s on a
    loaded 2-core CPU) during which ranks would leave one by one, with Python already back on SIGTERM's default
    action, so `srun --kill-on-bad-exit` would kill the laggards and turn their status 75 into 143."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # nothing is left to stop; a late signal must not change the status
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def exit_after(command: Callable[[], None]) -> None:
    """Run a command's main(), then leave through exit_now with its status (also `xlsr_dist.pretrain`'s way out)."""
    try:
        command()
    except SystemExit as done:
        exit_now(done.code if isinstance(done.code, int) else 1)


def cli() -> None:
    """Console-script entry (`xlsr-train`): the same fast, simultaneous exit as `python -m xlsr_dist.train`."""
    exit_after(main)


if __name__ == "__main__":
    cli()
