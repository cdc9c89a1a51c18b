"""The names of the evaluation metrics a run is judged by, and the problems with the flags that name them.

A basic module: training/best_checkpoint.py ranks checkpoints by these names, config validation checks them.
"""

from __future__ import annotations

# What the in-training evaluation reports (xlsr_dist.evaluation.counts), each lower-is-better.
METRICS = ("eval_loss", "eval_wer", "eval_cer")
# The metrics --primary_metric may name.
PRIMARY_METRICS = ("eval_wer", "eval_cer", "eval_loss")


def metric_key(name: str) -> str:
    """HF's spelling of metric_for_best_model, with or without the "eval_" prefix -> the logged name (eval_wer)."""
    return name if name.startswith("eval_") else f"eval_{name}"


def metric_problems(name: str, greater_is_better: bool | None) -> list[str]:
    """Problems with --metric_for_best_model / --greater_is_better, each naming its flag."""
    problems = []
    if metric_key(name) not in METRICS:
        choices = ", ".join(f"{m.removeprefix('eval_')} ({m})" for m in METRICS)
        problems.append(f"--metric_for_best_model: {name!r} is not an evaluation metric; one of {choices}")
    if greater_is_better:
        problems.append(
            "--greater_is_better: true would keep the worst checkpoint; every metric xlsr_dist evaluates (loss, wer, "
            "cer) is lower-is-better (leave it unset or false)"
        )
    return problems
