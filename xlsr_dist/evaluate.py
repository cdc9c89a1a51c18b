"""`python -m xlsr_dist.evaluate --model MODEL --data SHARDS [SHARDS ...]`: a trained model's WER, CER and loss on
test sets, with every utterance's hypothesis and an error report (xlsr_dist.evaluation.run does the work).

MODEL is an exported model directory, a training run's --output_dir (its final/, else its newest complete
checkpoint), a model directory inside a run (final/, best/) or one checkpoint directory. Launched like training:

    python -m xlsr_dist.evaluate ...                           one rank
    torchrun --nproc_per_node N -m xlsr_dist.evaluate ...      N ranks
    deepspeed --num_gpus N --module xlsr_dist.evaluate ...     N ranks

This command parses and checks the flags and what they point at on every rank before any process group exists
(a problem: one message naming the flag, exit status 2), then runs the evaluation.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from xlsr_dist.config import ConfigError
from xlsr_dist.config.tree import set_basename
from xlsr_dist.evaluation import lm_eval, run
from xlsr_dist.evaluation.run import PROG, EvalArgs
from xlsr_dist.world import World, device_for, report_problem

DESCRIPTION = (
    "Score a trained model on test sets (WER, CER, loss, per-utterance hypotheses, error report) on one rank, or on N "
    "with torchrun / the deepspeed launcher."
)
_NAME_OK = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class _Parser(argparse.ArgumentParser):
    """Every rank parses the same flags; only rank 0 speaks (one usage error, one --help, not one per rank)."""

    def __init__(self, quiet: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quiet = quiet

    def error(self, message: str) -> NoReturn:
        if self.quiet:
            sys.exit(2)
        super().error(message)

    def print_help(self, file: Any = None) -> None:
        if not self.quiet:
            super().print_help(file)


def _argparser(quiet: bool) -> argparse.ArgumentParser:
    p = _Parser(quiet, prog=f"python -m {PROG}", description=DESCRIPTION)
    p.add_argument("--model", required=True, help="exported model dir, run --output_dir, final/ or best/, checkpoint")
    p.add_argument("--data", required=True, nargs="+", metavar="SHARDS", help="one shard directory or URL per set")
    p.add_argument("--names", nargs="+", default=[], help="one name per --data set (default: each one's basename)")
    p.add_argument("--output_dir", default="", help="per-set outputs go to OUTPUT_DIR/<set>/ (default: <run>/eval)")
    p.add_argument("--batch_size", type=int, default=8, help="utterances per forward pass on each rank (default 8)")
    p.add_argument("--num_workers", type=int, default=1, help="data loader processes per rank (default 1)")
    p.add_argument("--tracking_uri", default="", help="default: the training run's, else $MLFLOW_TRACKING_URI")
    p.add_argument("--experiment_name", default="", help="experiment of a new evaluation run (default: xlsr_dist)")
    p.add_argument("--no_mlflow", action="store_true", help="do not log to MLflow")
    # Ranks meet only at the end of each set; their shares take about, not exactly, the same time.
    p.add_argument(
        "--dist_timeout_s", type=int, default=1800, help="how long a rank waits for the others (default 1800)"
    )
    # DeepSpeed's launcher appends --local_rank=N; the rank itself is read from the environment (world.py).
    p.add_argument("--local_rank", type=int, default=-1, help=argparse.SUPPRESS)
    lm_eval.add_flags(p)
    return p


def parse_args(argv: Sequence[str] | None = None, quiet: bool = False) -> EvalArgs:
    """Flags -> EvalArgs; raises ConfigError naming every bad flag."""
    a = _argparser(quiet).parse_args(argv)
    problems = []
    if a.batch_size < 1:
        problems.append(f"--batch_size must be at least 1 (got {a.batch_size})")
    if a.num_workers < 0:
        problems.append(f"--num_workers must be 0 or more (got {a.num_workers})")
    if a.dist_timeout_s < 1:
        problems.append(f"--dist_timeout_s must be at least 1 (got {a.dist_timeout_s})")
    names = list(a.names)
    if names and len(names) != len(a.data):
        problems.append(f"--names: {len(names)} name(s) for {len(a.data)} --data set(s); give one per set")
    for n in names:
        if not _NAME_OK.fullmatch(n):
            problems.append(f"--names {n!r}: use letters, digits, '.', '_' and '-' (it names a directory and metrics)")
    if not names or len(names) != len(a.data):
        names = [set_basename(d) for d in a.data]
    seen: dict[str, str] = {}
    for name, location in zip(names, a.data):
        if name in seen:
            problems.append(f"--data {seen[name]} and {location} are both named {name!r}; tell them apart with --names")
        seen.setdefault(name, location)
    lm_args, lm_problems = lm_eval.from_namespace(a)
    problems += lm_problems
    if problems:
        raise ConfigError(problems)
    return EvalArgs(
        model=a.model,
        data=list(a.data),
        names=names,
        output_dir=a.output_dir,
        batch_size=a.batch_size,
        num_workers=a.num_workers,
        tracking_uri=a.tracking_uri,
        experiment_name=a.experiment_name,
        no_mlflow=a.no_mlflow,
        dist_timeout_s=a.dist_timeout_s,
        lm=lm_args,
    )


def main(argv: Sequence[str] | None = None) -> None:
    world = World.from_env()
    try:
        args = parse_args(argv, quiet=not world.is_main)
        inputs = run.check_inputs(args)
        device = device_for(world)
    except ConfigError as exc:
        # Before any process group exists: every rank leaves; the ranks that can see the problem say it once.
        report_problem(world, PROG, str(exc), exc.scope)
        sys.exit(2)
    sys.exit(run.evaluate(args, inputs, world, device))


if __name__ == "__main__":
    main()
