"""The wav2vec2 CTC model: built for training (a pretrained checkpoint, the XLSR-53 architecture with random weights,
or a tiny one) and loaded for use (load_hf_model: the one loader of every command that uses a trained model).

Fine-tuning settings (dropouts, SpecAugment, CTC loss) are applied the way HF's run_speech_recognition_ctc.py does:
as config overrides, with the CTC head sized to the vocabulary. No torch.distributed here: every rank builds the
same model from the same seed and DeepSpeed takes it from there.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2Processor,
)

from xlsr_dist import run_dir
from xlsr_dist.audio import SAMPLE_RATE
from xlsr_dist.config import ModelConfig
from xlsr_dist.state_files import CheckpointError
from xlsr_dist.text import PAD, UNK, WORD_DELIMITER

log = logging.getLogger(__name__)

# How long to wait for the hub before calling it unreachable: huggingface_hub otherwise retries a failed DNS lookup
# for ~25 s before saying so, on every rank.
_HUB_PROBE_TIMEOUT_S = 5.0


class ModelLoadError(RuntimeError):
    """The pretrained weights could not be found; the message says how to provide them."""


def _finetune_overrides(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> dict[str, Any]:
    """Config keys run_speech_recognition_ctc.py sets on top of the pretrained config."""
    return {
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.activation_dropout,
        "feat_proj_dropout": cfg.feat_proj_dropout,
        "hidden_dropout": cfg.hidden_dropout,
        "final_dropout": cfg.final_dropout,
        "mask_time_prob": cfg.mask_time_prob,
        "layerdrop": cfg.layerdrop,
        "ctc_loss_reduction": cfg.ctc_loss_reduction,
        "ctc_zero_infinity": cfg.ctc_zero_infinity,
    }


def xlsr53_config(vocab_size: int = 32, pad_token_id: int = 0, **overrides: Any) -> Wav2Vec2Config:
    """The architecture of facebook/wav2vec2-large-xlsr-53 (its config.json), ~315M parameters."""
    values: dict[str, Any] = {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "feat_extract_norm": "layer",
        "feat_extract_activation": "gelu",
        "conv_dim": (512, 512, 512, 512, 512, 512, 512),
        "conv_stride": (5, 2, 2, 2, 2, 2, 2),
        "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
        "conv_bias": True,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "do_stable_layer_norm": True,
        "apply_spec_augment": True,
        "mask_time_length": 10,
        "mask_feature_prob": 0.0,
        # The checkpoint's own regularisation; fine-tuning overrides most of it (see _finetune_overrides).
        "attention_dropout": 0.1,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.1,
        "hidden_dropout": 0.1,
        "final_dropout": 0.0,
        "layerdrop": 0.1,
        "mask_time_prob": 0.075,
        "num_codevectors_per_group": 320,
        "num_codevector_groups": 2,
        "codevector_dim": 768,
        "proj_codevector_dim": 768,
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    values.update(overrides)
    return Wav2Vec2Config(**values)


def tiny_config(vocab_size: int = 32, pad_token_id: int = 0, **overrides: Any) -> Wav2Vec2Config:
    """A ~0.7M-parameter wav2vec2 for tests and the demo: 100 frames/s like XLSR's 50 but finer, so letters of the
    synthetic corpus get several frames each.

    Layer-normalised convolutions and pre-norm layers: no statistic is taken across time, so a padded utterance's
    valid frames come out exactly as when it is alone, and runs on any number of ranks see the same losses.
    """
    values: dict[str, Any] = {
        "hidden_size": 144,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "intermediate_size": 288,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-5,
        "initializer_range": 0.02,
        "feat_extract_norm": "layer",
        "feat_extract_activation": "gelu",
        # Product of strides 160: 10 ms frames at 16 kHz; each kernel covers its stride so no sample is skipped.
        # A 4 ms first kernel (64 samples) can become a band-pass filter bank from random weights far sooner than
        # XLSR's 10-sample one: on the demo corpus the all-blank CTC plateau ended after ~300 steps instead of >500.
        "conv_dim": (80, 128, 144),
        "conv_stride": (16, 5, 2),
        "conv_kernel": (64, 5, 4),
        "conv_bias": True,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "do_stable_layer_norm": True,
        "apply_spec_augment": True,
        "mask_time_length": 5,
        "mask_time_min_masks": 1,
        "mask_feature_prob": 0.0,
        "attention_dropout": 0.0,
        "activation_dropout": 0.0,
        "feat_proj_dropout": 0.0,
        "hidden_dropout": 0.0,
        "final_dropout": 0.0,
        "layerdrop": 0.0,
        "mask_time_prob": 0.0,
        "ctc_loss_reduction": "mean",
        "ctc_zero_infinity": True,
        "vocab_size": vocab_size,
        "pad_token_id": pad_token_id,
    }
    values.update(overrides)
    return Wav2Vec2Config(**values)


def output_frames(config: Wav2Vec2Config, num_samples: int) -> int:
    """Frames the feature encoder makes from ``num_samples`` (Wav2Vec2Model._get_feat_extract_output_lengths)."""
    length = int(num_samples)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        if length < kernel:
            return 0
        length = (length - kernel) // stride + 1
    if getattr(config, "add_adapter", False):
        for _ in range(config.num_adapter_layers):
            length = (length + 2 * 1 - config.adapter_kernel_size) // config.adapter_stride + 1
    return max(length, 0)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _offline() -> bool:
    import huggingface_hub.constants as hub_constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(hub_constants.HF_HUB_OFFLINE) or any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def _hub_unreachable_reason() -> str:
    """'' when the hub's host answers a TCP connect, else why not (DNS failure, refused, timeout)."""
    import huggingface_hub.constants as hub_constants

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
        return ""  # behind a proxy a direct connect proves nothing; let the download itself try

    url = urlparse(hub_constants.ENDPOINT)
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT_S):
            return ""
    except OSError as exc:
        return f"{host}:{port} is unreachable ({exc})"


def _how_to_provide(name: str) -> str:
    return (
        f"Provide the weights of {name!r} in one of these ways:\n"
        f"  1. on a machine with internet: `hf download {name}` (or `huggingface-cli download {name}`), then copy\n"
        f"     its Hugging Face cache (~/.cache/huggingface, or $HF_HOME) to this machine;\n"
        f"  2. or save the checkpoint into a directory (config.json + model.safetensors/pytorch_model.bin) and pass\n"
        f"     that directory as --model_name_or_path;\n"
        f"  3. or train from random weights with --architecture xlsr-53 (same architecture, no download) or\n"
        f"     --architecture tiny."
    )


# What from_pretrained needs besides config.json: one of these weight files (or the index of a sharded one).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _cached(name: str) -> bool:
    """The hub checkpoint ``name`` (config and weights) is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        found = [try_to_load_from_cache(name, f) for f in ("config.json", *WEIGHT_FILES)]
    except HFValidationError:
        return False
    return isinstance(found[0], str) and any(isinstance(f, str) for f in found[1:])


def missing_weights(name: str) -> str:
    """'' when the weights of --model_name_or_path ``name`` are at hand (a checkpoint directory, or the Hugging Face
    cache) or can be downloaded now; else what is wrong and how to provide them. Cheap and without side effects, so
    training can ask before any process group or model exists."""
    local = Path(name).expanduser()
    if local.is_dir():
        if (local / "config.json").is_file() and any((local / f).is_file() for f in WEIGHT_FILES):
            return ""
        return (
            f"--model_name_or_path {name}: the directory holds no wav2vec2 checkpoint (config.json and one of "
            f"{', '.join(WEIGHT_FILES)}).\n" + _how_to_provide("facebook/wav2vec2-large-xlsr-53")
        )
    if _cached(name):
        return ""
    if name.startswith(("/", "./", "../", "~")):
        return f"--model_name_or_path {name}: no such directory.\n" + _how_to_provide("facebook/wav2vec2-large-xlsr-53")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return (
            f"--model_name_or_path {name}: neither a directory nor a Hugging Face model id (like "
            f"facebook/wav2vec2-large-xlsr-53)."
        )
    return _no_download(name)


def _no_download(name: str) -> str:
    """Why hub checkpoint ``name``, not in the cache, cannot be downloaded now (with how to provide it), or ''."""
    if _offline():
        return (
            f"--model_name_or_path {name}: not in the Hugging Face cache and HF_HUB_OFFLINE is set.\n"
            + _how_to_provide(name)
        )
    reason = _hub_unreachable_reason()
    if reason:
        return f"--model_name_or_path {name}: not in the Hugging Face cache and {reason}.\n" + _how_to_provide(name)
    return ""


def _from_pretrained(name: str, **kwargs: Any) -> Wav2Vec2ForCTC:
    """Wav2Vec2ForCTC.from_pretrained, saying in one log line which weights are new and which were dropped, instead
    of transformers' multi-line load report (printed on every rank)."""
    report_logger = logging.getLogger("transformers.modeling_utils")
    level = report_logger.level
    report_logger.setLevel(logging.ERROR)
    try:
        model, info = Wav2Vec2ForCTC.from_pretrained(name, output_loading_info=True, **kwargs)
    finally:
        report_logger.setLevel(level)
    resized = sorted(str(k[0] if isinstance(k, (list, tuple)) else k) for k in info.get("mismatched_keys", []))
    log.info(
        "loaded %s: newly initialised: %s; dropped (not used by CTC fine-tuning): %s%s",
        name,
        ", ".join(sorted(info.get("missing_keys", []))) or "none",
        ", ".join(sorted(info.get("unexpected_keys", []))) or "none",
        f"; re-initialised for another size: {', '.join(resized)}" if resized else "",
    )
    return model


def _load_pretrained(name: str, overrides: dict[str, Any]) -> Wav2Vec2ForCTC:
    # A fine-tuned checkpoint's head has another vocabulary size; a pretraining checkpoint has no head at all.
    kwargs = dict(overrides, ignore_mismatched_sizes=True)
    if Path(name).expanduser().is_dir():
        try:
            return _from_pretrained(str(Path(name).expanduser()), local_files_only=True, **kwargs)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"--model_name_or_path {name}: the directory does not hold a loadable wav2vec2 checkpoint ({exc}).\n"
                + _how_to_provide("facebook/wav2vec2-large-xlsr-53")
            ) from exc
    try:
        # The cache first, without a network round trip: the common case on clusters with no internet.
        return _from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError) as exc:
        cache_miss: Exception = exc
    problem = _no_download(name)
    if problem:
        raise ModelLoadError(problem) from cache_miss
    try:
        return _from_pretrained(name, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"--model_name_or_path {name}: download failed ({exc}).\n" + _how_to_provide(name)
        ) from exc


def build_model(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> Wav2Vec2ForCTC:
    """The CTC model ``cfg`` asks for, head sized to the vocabulary; raises ModelLoadError when weights are missing.

    Random initialisation draws from torch's global generator: seed it first for identical weights on every rank.
    """
    overrides = _finetune_overrides(cfg, vocab_size, pad_token_id)
    if cfg.architecture == "tiny":
        model = Wav2Vec2ForCTC(tiny_config(**overrides))
    elif cfg.architecture == "xlsr-53":
        model = Wav2Vec2ForCTC(xlsr53_config(**overrides))
    elif cfg.architecture == "":
        model = _load_pretrained(cfg.model_name_or_path, overrides)
    else:
        raise ModelLoadError(f"--architecture: {cfg.architecture!r} is not one of '', 'xlsr-53', 'tiny'")
    if cfg.architecture and cfg.ctc_blank_bias:
        with torch.no_grad():
            model.lm_head.bias[pad_token_id] = cfg.ctc_blank_bias
    if cfg.freeze_feature_encoder:
        model.freeze_feature_encoder()
    if cfg.gradient_checkpointing:
        # Renamed in transformers 5; the old name still exists there but warns.
        enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
        enable()
    elif _checkpointing(model):
        # A config carrying transformers' legacy "gradient_checkpointing": true (older XLS-R checkpoints do) turns it
        # on at load; the flag decides.
        disable = getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable
        disable()
    return model


def _checkpointing(model: Wav2Vec2ForCTC) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (which now warns) to is_activation_checkpointing.
    renamed = getattr(type(model), "is_activation_checkpointing", None)
    return bool(model.is_activation_checkpointing if renamed is not None else model.is_gradient_checkpointing)


def build_processor(vocab_path: str | Path) -> Wav2Vec2Processor:
    """Tokenizer + feature extractor saved beside checkpoints so `Wav2Vec2Processor.from_pretrained` works on them."""
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab_path), unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER)
    feature_extractor = Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=SAMPLE_RATE,
        padding_value=0.0,
        do_normalize=True,
        return_attention_mask=True,
    )
    return Wav2Vec2Processor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def load_hf_model(path: str | Path) -> tuple[Wav2Vec2ForCTC, Wav2Vec2Processor]:
    """(Wav2Vec2ForCTC in fp32, Wav2Vec2Processor) from a save_pretrained dir, a run's --output_dir (final/, else
    its newest complete checkpoint) or one checkpoint directory; raises CheckpointError for anything else."""
    p = Path(path)
    if (p / "config.json").is_file() and not (p / run_dir.MARKER).is_file():
        # fp32 whatever the files hold: transformers 5 would otherwise load a 16-bit model as 16-bit (dtype "auto"),
        # which fp32 audio input cannot run through ("Input type (float) and bias type (c10::Half)").
        model = Wav2Vec2ForCTC.from_pretrained(p, dtype=torch.float32)
        return model, Wav2Vec2Processor.from_pretrained(p)
    if (p / run_dir.FINAL / "config.json").is_file():
        return load_hf_model(p / run_dir.FINAL)
    ckpt = run_dir.newest_complete(p) if (p / run_dir.CHECKPOINTS).is_dir() else p
    if ckpt is None or not (ckpt / run_dir.MARKER).is_file():
        raise CheckpointError(f"{path}: neither a saved model, a run output dir, nor a complete checkpoint")
    base = ckpt.parent.parent / run_dir.MODEL_CONFIG
    model = Wav2Vec2ForCTC(Wav2Vec2Config.from_pretrained(base))
    model.load_state_dict(run_dir.fp32_weights(ckpt))
    return model.eval(), Wav2Vec2Processor.from_pretrained(base)


def graph_friendly_time_masking(model: Wav2Vec2ForCTC) -> None:
    """Apply given SpecAugment time masks with ``torch.where`` instead of HF's boolean index assignment, on this
    model instance only (--torch_compile).

    HF's ``hidden_states[mask_time_indices] = masked_spec_embed`` lowers to ``aten.nonzero``, whose output size
    depends on the data: torch.compile breaks the graph there, and each piece recompiles on its own for every new
    length. ``torch.where`` writes the same values (masked frames become ``masked_spec_embed``, the rest stay) and
    gives the same gradients, in one graph. Only the case xlsr_dist uses is replaced -- masks handed in by the
    collator, no feature-axis masking; anything else (the model drawing its own masks, mask_feature_prob > 0) still
    runs HF's method.
    """
    inner = model.wav2vec2
    original = inner._mask_hidden_states

    def _mask_hidden_states(
        hidden_states: torch.Tensor,
        mask_time_indices: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config = inner.config
        feature_masking = config.mask_feature_prob > 0 and inner.training
        if mask_time_indices is None or not getattr(config, "apply_spec_augment", True) or feature_masking:
            return original(hidden_states, mask_time_indices=mask_time_indices, attention_mask=attention_mask)
        embed = inner.masked_spec_embed.to(hidden_states.dtype)
        return torch.where(mask_time_indices.to(torch.bool)[..., None], embed, hidden_states)

    inner._mask_hidden_states = _mask_hidden_states


def graph_friendly_feature_encoder(model: Wav2Vec2ForCTC) -> None:
    """Leave out HF's ``hidden_states.requires_grad = True`` on the audio when the feature encoder is trained, on
    this model instance only (--torch_compile), unless gradient checkpointing is on (which is what it is for).

    torch.compile cannot trace a requires_grad change and breaks the graph there (one graph per piece, each
    recompiled per shape). Without checkpointing the flag only makes autograd compute a gradient for the input audio,
    which nothing reads: the parameters' gradients are the same without it."""
    if _checkpointing(model):
        return
    encoder = model.wav2vec2.feature_extractor

    def forward(input_values: torch.Tensor) -> torch.Tensor:
        hidden_states = input_values[:, None]
        for conv_layer in encoder.conv_layers:
            hidden_states = conv_layer(hidden_states)
        return hidden_states

    encoder.forward = forward
