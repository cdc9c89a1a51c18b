"""``python -m xlsr_dist.pretrain``: continued (or from-scratch) wav2vec 2.0 self-supervised pretraining.

Parse and check (the training tree's flags plus config/pretrain.py's objective flags), then
training/pretraining/run.py on every rank. Launched as training is: plain python (one rank), ``deepspeed
--num_gpus N --module xlsr_dist.pretrain``, torchrun, slurm/pretrain.sbatch. Its --output_dir's final/ is a
``--model_name_or_path`` for ``xlsr_dist.train``. docs/pretraining.md says more.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from xlsr_dist.config import ConfigError, plan_batches
from xlsr_dist.config.flags import argparser
from xlsr_dist.config.pretrain import parse_pretrain_args, pretrain_help
from xlsr_dist.console import setup_console
from xlsr_dist.data.locations import shard_paths
from xlsr_dist.data.problems import DataProblem
from xlsr_dist.world import World, barrier, device_for, init, report_problem, shutdown

log = logging.getLogger("xlsr_dist")
PROG = "xlsr_dist.pretrain"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if "-h" in args or "--help" in args:
        print(
            argparser()
            .format_help()
            .replace("Fine-tune wav2vec2 XLS-R with CTC", "Pretrain wav2vec2 (wav2vec 2.0's objective)")
        )
        print("objective (config/pretrain.py):\n" + pretrain_help())
        sys.exit(0)
    # As in xlsr_dist.train: USR1/TERM (SLURM's time-limit warning, preemption, a launcher's SIGTERM) stop the run
    # after the step every rank is in, with a checkpoint, instead of killing it.
    from xlsr_dist.train import EXIT_PREEMPTED, StopRequest, retain_freed_memory

    stop = StopRequest()
    stop.install()
    world = World.from_env()
    try:
        cfg, pcfg = parse_pretrain_args(args)
        if cfg.data.train_data != "demo":
            shard_paths("--train_data", cfg.data.train_data)
        plan = plan_batches(cfg.train.global_batch_size, world.world_size, cfg.train.per_device_train_batch_size)
        device = device_for(world)
        # Loaded after the flags are known good: --help and flag errors do not wait for torch.
        from xlsr_dist.training import engine

        ds_config = engine.resolve_ds_config(cfg, plan, device)
    except ConfigError as exc:
        report_problem(world, PROG, str(exc), exc.scope)
        sys.exit(2)
    setup_console(world)
    retain_freed_memory(cfg)
    from xlsr_dist.model import ModelLoadError
    from xlsr_dist.state_files import CheckpointError
    from xlsr_dist.training.elastic import ElasticResumeError
    from xlsr_dist.training.pretraining.run import pretrain

    init(world, device, cfg.train.dist_timeout_s)
    code = 0
    try:
        stopped_at = pretrain(cfg, pcfg, world, plan, device, ds_config, stop)
        if stopped_at is not None:
            log.warning(
                "stop requested (%s): checkpoint saved at step %d; exiting with status %d so the scheduler can "
                "requeue; resume with --resume_from_checkpoint latest",
                stop.signal_name or "signal on another rank",
                stopped_at,
                EXIT_PREEMPTED,
            )
            code = EXIT_PREEMPTED
        # Leave together: under srun --kill-on-bad-exit the first rank to exit 75 would get the others killed.
        barrier()
    except (ModelLoadError, CheckpointError, ElasticResumeError) as exc:
        report_problem(world, PROG, str(exc), "node")
        code = 2
    except DataProblem as exc:
        report_problem(world, PROG, str(exc), "run")
        code = 2
    finally:
        shutdown()
    sys.exit(code)


def cli() -> None:
    """`python -m xlsr_dist.pretrain`: main(), then training's fast, simultaneous exit (train.exit_now: ranks leaving
    one by one through the interpreter's teardown would let `srun --kill-on-bad-exit` turn a 75 into 143)."""
    from xlsr_dist.train import exit_after

    exit_after(main)


if __name__ == "__main__":
    cli()
