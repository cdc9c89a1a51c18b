"""The model pretraining trains and what it leaves behind.

Continued pretraining loads a Wav2Vec2ForPreTraining checkpoint that has its quantizer (XLS-R's as published: any
save_pretrained directory or hub id holding ``quantizer.*``); a random one is built from an --architecture. The
model's own SpecAugment and layerdrop are off their per-process draws: masks come from the objective, layerdrop from
training/layerdrop.py.

``save_for_finetuning`` writes what ``xlsr_dist.train --model_name_or_path`` loads: the wav2vec2 encoder's weights
only (quantizer and projections dropped, as fine-tuning from the hub's pretraining checkpoints drops them).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from transformers import Wav2Vec2Config, Wav2Vec2ForPreTraining

from xlsr_dist.config import ModelConfig
from xlsr_dist.model import ModelLoadError, tiny_config, xlsr53_config

log = logging.getLogger("xlsr_dist")

# Keys of Wav2Vec2ForPreTraining's state dict that only pretraining uses.
PRETRAINING_ONLY = ("quantizer.", "project_q.", "project_hid.")


def _overrides(cfg: ModelConfig, mask_prob: float, num_negatives: int, diversity_loss_weight: float) -> dict[str, Any]:
    return {
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.feat_proj_dropout,
        "hidden_dropout": cfg.hidden_dropout,
        "layerdrop": cfg.layerdrop,
        # Masks are given to forward (objective.py); a feature mask would be drawn per process.
        "apply_spec_augment": True,
        # Wav2Vec2Model has its mask embedding only when the config masks.
        "mask_time_prob": mask_prob,
        "mask_feature_prob": 0.0,
        "num_negatives": num_negatives,
        "diversity_loss_weight": diversity_loss_weight,
    }


def build_pretraining_model(
    cfg: ModelConfig, mask_prob: float, num_negatives: int, diversity_loss_weight: float
) -> Wav2Vec2ForPreTraining:
    """A random model of --architecture, else --model_name_or_path with its quantizer; ModelLoadError otherwise.

    Random weights come from torch's global generator: seed it first for the same weights on every rank."""
    overrides = _overrides(cfg, mask_prob, num_negatives, diversity_loss_weight)
    if cfg.architecture == "tiny":
        model = Wav2Vec2ForPreTraining(tiny_config(**overrides))
    elif cfg.architecture == "xlsr-53":
        model = Wav2Vec2ForPreTraining(xlsr53_config(**overrides))
    else:
        model = _load_with_quantizer(cfg.model_name_or_path, overrides)
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


def _load_with_quantizer(name: str, overrides: dict[str, Any]) -> Wav2Vec2ForPreTraining:
    local = Path(name).expanduser()
    try:
        model, info = Wav2Vec2ForPreTraining.from_pretrained(
            str(local) if local.is_dir() else name, output_loading_info=True, dtype=torch.float32, **overrides
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"--model_name_or_path {name}: no loadable wav2vec2 checkpoint there ({' '.join(str(exc).split())[:300]})"
        ) from exc
    missing = [k for k in info["missing_keys"] if k.startswith(PRETRAINING_ONLY)]
    if missing:
        raise ModelLoadError(
            f"--model_name_or_path {name}: the checkpoint has no quantizer ({len(missing)} pretraining weight(s) "
            f"missing, e.g. {sorted(missing)[0]}), so its pretraining cannot be continued; a fine-tuned (CTC) model "
            "or a pretraining output saved for fine-tuning lacks it. Give a pretraining checkpoint with its quantizer "
            "(e.g. facebook/wav2vec2-xls-r-300m) or --architecture tiny|xlsr-53 to start from random weights"
        )
    return model


def save_for_finetuning(model: Wav2Vec2ForPreTraining, dest: Path) -> None:
    """save_pretrained of the encoder only (fp32), loadable by Wav2Vec2ForCTC.from_pretrained."""
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items() if not k.startswith(PRETRAINING_ONLY)}
    config: Wav2Vec2Config = model.config
    config.architectures = ["Wav2Vec2ForPreTraining"]
    model.save_pretrained(dest, state_dict=state)
