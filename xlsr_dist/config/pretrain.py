"""The pretraining command's own section (``python -m xlsr_dist.pretrain``): the objective's settings.

Everything else (model source, data, batch, optimizer, DeepSpeed config, tracking) is the training tree's flags,
parsed and validated by ``flags.parse_args``; these are split off first. Defaults: the wav2vec 2.0 / XLS-R recipe as
transformers' example ``run_wav2vec2_pretraining_no_trainer.py`` runs it (its README's command and Wav2Vec2Config's
defaults), named per field.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
from collections.abc import Sequence
from dataclasses import dataclass

from xlsr_dist.config.errors import ConfigError
from xlsr_dist.config.flags import parse_args
from xlsr_dist.config.tree import Config
from xlsr_dist.config.validate import EVAL_DATA_REQUIRED


@dataclass(frozen=True)
class PretrainConfig:
    """wav2vec 2.0's contrastive objective: masking, negatives, diversity, Gumbel temperature."""

    pretrain_mask_time_prob: float = 0.65
    """Share of each utterance's feature frames that start a masked span, as _compute_mask_indices counts it (HF
    pretraining example: 0.65)."""
    pretrain_mask_time_length: int = 10
    """Frames per masked span (HF pretraining example and wav2vec 2.0: 10)."""
    pretrain_mask_time_min_masks: int = 2
    """At least this many spans per utterance where they fit (Wav2Vec2Config.mask_time_min_masks: 2)."""
    num_negatives: int = 100
    """Distractors per masked frame, drawn from the other masked frames of the same utterance (Wav2Vec2Config: 100)."""
    diversity_loss_weight: float = 0.1
    """Weight of the codebook diversity loss added to the contrastive loss (Wav2Vec2Config and wav2vec 2.0: 0.1)."""
    max_gumbel_temperature: float = 2.0
    """Gumbel softmax temperature at step 0 (HF pretraining example: 2.0)."""
    min_gumbel_temperature: float = 0.5
    """The temperature never decays below this (HF pretraining example: 0.5)."""
    gumbel_temperature_decay: float = 0.999995
    """Temperature factor per optimizer step: max(max * decay**step, min) (HF pretraining example: 0.999995)."""
    max_batch_seconds: float = 0.0
    """Audio seconds per global batch over all ranks (fairseq's max_tokens; wav2vec 2.0 base: 1.4M samples x 64
    GPUs = 5600 s), cut into --global_batch_size / --per_device_train_batch_size micro-batches; needs
    --per_device_train_batch_size. 0: a global batch is --global_batch_size utterances."""


def pretrain_field_docs() -> dict[str, str]:
    """Flag name -> its docstring as one paragraph (the flag's --help)."""
    body = ast.parse(inspect.getsource(PretrainConfig)).body[0]
    assert isinstance(body, ast.ClassDef)  # the class's own source
    out: dict[str, str] = {}
    for statement, following in zip(body.body, body.body[1:]):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant):
                out[statement.target.id] = " ".join(str(following.value.value).split())
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    docs = pretrain_field_docs()
    for f in dataclasses.fields(PretrainConfig):
        kind = int if f.type in ("int", int) else float
        parser.add_argument(f"--{f.name}", type=kind, default=f.default, help=f"{docs[f.name]} (default: {f.default})")
    return parser


def pretrain_help() -> str:
    """The objective flags' help, printed after the training flags' by the pretrain command's --help."""
    return _parser().format_help().split("\n", 2)[-1]


def validate_pretrain(p: PretrainConfig) -> list[str]:
    problems = []
    if not 0 < p.pretrain_mask_time_prob <= 1:
        problems.append(f"--pretrain_mask_time_prob: {p.pretrain_mask_time_prob:g} is not in (0, 1]")
    if p.pretrain_mask_time_length < 1:
        problems.append(f"--pretrain_mask_time_length: {p.pretrain_mask_time_length} is not at least 1")
    if p.pretrain_mask_time_min_masks < 0:
        problems.append(f"--pretrain_mask_time_min_masks: {p.pretrain_mask_time_min_masks} is negative")
    if p.num_negatives < 1:
        problems.append(f"--num_negatives: {p.num_negatives} is not at least 1")
    if p.max_batch_seconds < 0:
        problems.append(f"--max_batch_seconds: {p.max_batch_seconds:g} is negative")
    if p.diversity_loss_weight < 0:
        problems.append(f"--diversity_loss_weight: {p.diversity_loss_weight:g} is negative")
    if not 0 < p.min_gumbel_temperature <= p.max_gumbel_temperature:
        problems.append("--min_gumbel_temperature/--max_gumbel_temperature: need 0 < min <= max")
    if not 0 < p.gumbel_temperature_decay <= 1:
        problems.append(f"--gumbel_temperature_decay: {p.gumbel_temperature_decay:g} is not in (0, 1]")
    return problems


def parse_pretrain_args(argv: Sequence[str] | None) -> tuple[Config, PretrainConfig]:
    """The objective's flags, then the training tree's from the rest; every problem of both in one ConfigError."""
    try:
        known, rest = _parser().parse_known_args(argv)
    except SystemExit as exc:  # argparse's own error (a value that is not a number)
        raise ConfigError(["an objective flag has a value that is not a number (see --help)"]) from exc
    pretrain = PretrainConfig(**{f.name: getattr(known, f.name) for f in dataclasses.fields(PretrainConfig)})
    problems = validate_pretrain(pretrain)
    try:
        cfg = parse_args(rest)
    except ConfigError as exc:
        # Pretraining evaluates nothing: the training tree's demand for --eval_data does not apply.
        left = [x for x in exc.problems if not x.startswith(EVAL_DATA_REQUIRED)]
        if left or problems or not isinstance(exc.config, Config):
            raise ConfigError([*problems, *left], exc.scope, exc.config) from exc
        cfg = exc.config
    if pretrain.max_batch_seconds > 0 and cfg.train.per_device_train_batch_size <= 0:
        problems.append(
            "--max_batch_seconds: needs --per_device_train_batch_size (the micro-batch count per global batch is "
            "--global_batch_size / --per_device_train_batch_size, the same on any world size)"
        )
    if problems:
        raise ConfigError(problems)
    return cfg, pretrain
