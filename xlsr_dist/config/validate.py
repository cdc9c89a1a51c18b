"""Validation of a Config: every problem collected at once, each naming the flag to change, one check per section.

Nothing here asserts: a user's value is never a programming error.
"""

from __future__ import annotations

import math
from pathlib import Path

from xlsr_dist.config.errors import ConfigError
from xlsr_dist.config.metrics import PRIMARY_METRICS, metric_problems
from xlsr_dist.config.tree import Config, DataConfig, ModelConfig, TrackingConfig, TrainConfig
from xlsr_dist.text import settings_problems

REPO_ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURES = ("", "xlsr-53", "tiny")
# Probabilities of the model section: each in [0, 1).
PROBABILITIES = (
    "attention_dropout",
    "activation_dropout",
    "feat_proj_dropout",
    "hidden_dropout",
    "final_dropout",
    "mask_time_prob",
    "layerdrop",
)

# The start of the problem a run without --eval_data gets (xlsr_dist.pretrain, which evaluates nothing, drops it).
EVAL_DATA_REQUIRED = "--eval_data: required"


def validate(cfg: Config) -> None:
    """Collect every problem in ``cfg``; raise one ConfigError naming each flag to change."""
    found = [
        *model_problems(cfg.model),
        *data_problems(cfg.data),
        *train_problems(cfg.train),
        *tracking_problems(cfg.tracking),
    ]
    if found:
        raise ConfigError(found)


def model_problems(m: ModelConfig) -> list[str]:
    p: list[str] = []
    if m.architecture not in ARCHITECTURES:
        p.append(f"--architecture: {m.architecture!r} is not one of {', '.join(repr(a) for a in ARCHITECTURES)}")
    if not m.architecture and not m.model_name_or_path:
        p.append("--model_name_or_path: empty; give a hub id or local directory, or set --architecture")
    for name in PROBABILITIES:
        value = getattr(m, name)
        if not 0.0 <= value < 1.0:
            p.append(f"--{name}: {value} must be in [0, 1)")
    if m.ctc_blank_bias and m.architecture not in ("tiny", "xlsr-53"):
        p.append("--ctc_blank_bias: only for models built from random weights (--architecture tiny or xlsr-53)")
    if not math.isfinite(m.ctc_blank_bias):
        p.append(f"--ctc_blank_bias: {m.ctc_blank_bias} must be finite")
    if m.ctc_loss_reduction not in ("mean", "sum"):
        p.append(f"--ctc_loss_reduction: {m.ctc_loss_reduction!r} must be 'mean' or 'sum'")
    return p


def data_problems(d: DataConfig) -> list[str]:
    p: list[str] = []
    if not d.train_data:
        p.append("--train_data: empty; give a shard directory/URL or 'demo'")
    try:
        if d.train_data:
            d.train_sets()
    except ValueError as e:
        p.append(f"--train_data: {e}")
    if not (math.isfinite(d.mixing_temperature) and d.mixing_temperature > 0):
        p.append(f"--mixing_temperature: {d.mixing_temperature} must be a number > 0")
    try:
        d.eval_sets()
    except ValueError as e:
        p.append(f"--eval_data: {e}")
    if d.train_data != "demo" and not d.eval_data:
        p.append(f"{EVAL_DATA_REQUIRED} when --train_data is not 'demo'")
    if d.max_duration_in_seconds <= d.min_duration_in_seconds:
        p.append("--max_duration_in_seconds: must be greater than --min_duration_in_seconds")
    if d.bucket_size_multiplier < 1:
        p.append("--bucket_size_multiplier: must be >= 1 (1 disables bucketing)")
    if d.sortagrad_epochs < 0:
        p.append("--sortagrad_epochs: must be >= 0 (0 disables SortaGrad)")
    if d.dataloader_num_workers < 0:
        p.append("--dataloader_num_workers: must be >= 0")
    if d.demo_train_utterances < 16 or d.demo_eval_utterances < 1:
        p.append("--demo_train_utterances/--demo_eval_utterances: need at least 16 and 1 utterances")
    p.extend(settings_problems(d.language, d.text_normalization))
    p.extend(augmentation_problems(d))
    return p


def augmentation_problems(d: DataConfig) -> list[str]:
    """Probabilities in [0, 1], ranges in order, factors positive, a folder for noise and reverberation."""
    p: list[str] = []
    for name in ("speed_perturb_prob", "noise_prob", "rir_prob", "gain_prob"):
        if not 0.0 <= getattr(d, name) <= 1.0:
            p.append(f"--{name}: {getattr(d, name)} must be in [0, 1]")
    factors = [part.strip() for part in d.speed_factors.split(",")]
    bad = [f for f in factors if not _positive_number(f)]
    if bad:
        p.append(f"--speed_factors: {', '.join(repr(b) for b in bad)} not a positive number (e.g. '0.9,1.0,1.1')")
    for low, high in (("noise_snr_min_db", "noise_snr_max_db"), ("gain_min_db", "gain_max_db")):
        values = getattr(d, low), getattr(d, high)
        if not all(math.isfinite(v) for v in values) or values[0] > values[1]:
            p.append(f"--{low}/--{high}: {values[0]} .. {values[1]} must be finite, the lowest first")
    for prob, folder in (("noise_prob", "noise_dir"), ("rir_prob", "rir_dir")):
        path = getattr(d, folder)
        if getattr(d, prob) > 0 and not path:
            p.append(f"--{folder}: empty; --{prob} {getattr(d, prob)} needs a folder of audio files or its shards")
        elif getattr(d, prob) > 0 and "://" not in path and not Path(path).expanduser().is_dir():
            p.append(f"--{folder}: {path} is not a directory")
    return p


def _positive_number(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return math.isfinite(value) and value > 0


def train_problems(t: TrainConfig) -> list[str]:
    p = _optimizer_problems(t)
    if t.global_batch_size < 1:
        p.append("--global_batch_size: must be >= 1")
    if t.per_device_train_batch_size < 0:
        p.append("--per_device_train_batch_size: must be >= 0 (0 = automatic)")
    if t.per_device_eval_batch_size < 1:
        p.append("--per_device_eval_batch_size: must be >= 1")
    for name in ("logging_steps", "eval_steps", "save_steps"):
        if getattr(t, name) < 1:
            p.append(f"--{name}: must be >= 1")
    if t.save_total_limit < 0:
        p.append("--save_total_limit: must be >= 0 (0 keeps every checkpoint)")
    p.extend(metric_problems(t.metric_for_best_model or "eval_wer", t.greater_is_better))
    if t.load_best_model_at_end and t.eval_steps >= 1 and t.save_steps % t.eval_steps:
        p.append(
            f"--load_best_model_at_end: --save_steps ({t.save_steps}) must be a multiple of --eval_steps "
            f"({t.eval_steps}), so that every saved checkpoint has an evaluation to rank it by"
        )
    if not t.output_dir:
        p.append("--output_dir: empty")
    if not t.deepspeed:
        p.append("--deepspeed: empty; use ds_configs/zero2_fp16.json (GPU), zero2_bf16.json or zero2_fp32.json")
    elif resolve_path(t.deepspeed) is None:
        p.append(f"--deepspeed: {t.deepspeed} not found (looked in the working directory and {REPO_ROOT})")
    if t.dist_timeout_s < 10:
        p.append("--dist_timeout_s: must be >= 10 seconds")
    if t.max_nonfinite_steps < 1:
        p.append("--max_nonfinite_steps: must be >= 1")
    if t.primary_metric and t.primary_metric not in PRIMARY_METRICS:
        p.append(
            f"--primary_metric: {t.primary_metric!r} is not one of {', '.join(PRIMARY_METRICS)} (or '': by language)"
        )
    return p


def _optimizer_problems(t: TrainConfig) -> list[str]:
    """The learning rate, its schedule, the step count and AdamW's settings."""
    p: list[str] = []
    if t.learning_rate <= 0:
        p.append(f"--learning_rate: {t.learning_rate} must be > 0")
    if t.warmup_steps < 0:
        p.append("--warmup_steps: must be >= 0")
    if t.max_steps == 0 or t.max_steps < -1:
        p.append("--max_steps: must be a positive number of optimizer steps, or -1 to use --num_train_epochs")
    if t.max_steps == -1 and t.num_train_epochs <= 0:
        p.append("--num_train_epochs: must be > 0 when --max_steps is -1")
    if not (0.0 <= t.adam_beta1 < 1.0 and 0.0 <= t.adam_beta2 < 1.0):
        p.append("--adam_beta1/--adam_beta2: must be in [0, 1)")
    if t.adam_epsilon <= 0:
        p.append("--adam_epsilon: must be > 0")
    if t.weight_decay < 0:
        p.append("--weight_decay: must be >= 0")
    if t.max_grad_norm < 0:
        p.append("--max_grad_norm: must be >= 0 (0 disables clipping)")
    return p


def tracking_problems(k: TrackingConfig) -> list[str]:
    if k.report_to not in ("mlflow", "none"):
        return [f"--report_to: {k.report_to!r} must be 'mlflow' or 'none'"]
    return []


def resolve_path(path: str) -> Path | None:
    """A config path as given, else relative to the repository (so `-m xlsr_dist.train` works from anywhere)."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return candidate
    in_repo = REPO_ROOT / path
    return in_repo if in_repo.is_file() else None
